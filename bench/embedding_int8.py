"""float32 against int8: model_only and ingest_e2e of both model cards in turns (--int8, --int8-only)."""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import PHOTO_SIZE, CpuMeter, free_port, log, machine_info, make_photos
from embedding_common import _BENCH, QUIET_SHARE, check, mkdir, ratio
from embedding_model import bench_model_only
from embedding_server import _serve_command, ingest_on_new_server

INT8_TARGETS = {"model_only": 1.6, "ingest_e2e": 1.3}  # int8 card / float32 card, images per second


def bench_int8(files: list[Path], blobs: list[bytes], args: argparse.Namespace, work: Path) -> dict:
    """model_only and ingest_e2e for the float32 card and the int8 card, side by side: each measurement of one
    card is followed at once by the same measurement of the other, --int8-turns times, float32 and int8 first in
    turn, so a drift of the machine's speed falls on both; each figure is the mean of its turns."""
    from lookalike_server.config import ServerConfig
    from lookalike_server.imaging import image_to_tensor
    from lookalike_server.model_card import DEFAULT_CARD, load_model_card

    paths = {"float32": DEFAULT_CARD, "int8": Path(args.int8_card).resolve()}
    cards = {name: load_model_card(path) for name, path in paths.items()}
    max_pixels = ServerConfig().max_image_pixels
    samples = {name: np.stack([image_to_tensor(b, card, max_pixels) for b in blobs[:32]])
               for name, card in cards.items()}
    turns = [(("float32", "int8"), ("int8", "float32"))[turn % 2] for turn in range(args.int8_turns)]
    model_runs: dict[str, list[dict]] = {name: [] for name in cards}
    for order in turns:
        for name in order:
            log(f"int8 comparison: model_only {name}")
            model_runs[name].append(bench_model_only(cards[name], samples[name], args.batch_sizes, args.model_min_s))
    ingest_runs: dict[str, list[dict]] = {name: [] for name in cards}
    for turn, order in enumerate(turns):
        for name in order:
            server = f"127.0.0.1:{free_port()}"
            folder = mkdir(work / f"{name}-{turn}")
            command = _serve_command(server, folder, args.store, args, False, paths[name])
            ingest_runs[name].append(ingest_on_new_server(command, server, folder, files, args))
            log(f"int8 comparison: ingest_e2e {name}: {ingest_runs[name][-1]['images_per_s']} img/s")

    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 1)

    out: dict[str, Any] = {}
    for name, card in cards.items():
        best = [r["images_per_s"] for r in model_runs[name]]
        out[name] = {
            "card": str(paths[name].relative_to(_BENCH.parent)) if paths[name].is_relative_to(_BENCH.parent)
            else str(paths[name]),
            "model": card.name,
            "model_only": {"images_per_s": mean(best), "turns_images_per_s": best,
                           "best": [{k: r[k] for k in ("best_batch_size", "best_layout")} for r in model_runs[name]],
                           "by_layout_and_batch_size": [r["by_layout_and_batch_size"] for r in model_runs[name]],
                           "cpu_ms_per_image_by_batch_size": [r["cpu_ms_per_image_by_batch_size"]
                                                              for r in model_runs[name]]},
            "ingest_e2e": {"images_per_s": mean([r["images_per_s"] for r in ingest_runs[name]]),
                           "turns": ingest_runs[name]},
        }
    ratios = {phase: ratio(out["int8"][phase]["images_per_s"], out["float32"][phase]["images_per_s"])
              for phase in ("model_only", "ingest_e2e")}
    # CPU time per image is far less disturbed by other work on the machine than images per second.
    cpu_ms = {name: sum(r["cpu_ms_per_image_by_batch_size"][str(r["best_batch_size"])] for r in runs) / len(runs)
              for name, runs in model_runs.items()}
    ratios["model_only_cpu_ms_float32_over_int8"] = ratio(cpu_ms["float32"], cpu_ms["int8"])
    ratios["ingest_e2e_server_cpu_s_float32_over_int8"] = ratio(
        sum(r["cpu"]["watched_process_s"] for r in ingest_runs["float32"]),
        sum(r["cpu"]["watched_process_s"] for r in ingest_runs["int8"]))
    return {
        **out,
        "int8_over_float32": ratios,
        "targets": {phase: check(ratios[phase], ">=", target) for phase, target in INT8_TARGETS.items()},
        "ratios_are": "int8_over_float32: images per second, int8 / float32; *_float32_over_int8: CPU time per image "
                      "(model_only, at each card's best batch size) or the server's CPU seconds over the ingest, "
                      "float32 / int8",
        "how": "each card's model_only (every --batch-sizes, both CPU layouts, the best) and ingest_e2e (a fresh "
               f"`lookalike serve --model-card` per card and turn, --milvus-embedded {args.store}, {args.streams} "
               f"streams, the median of {args.ingest_rounds} rounds), in {args.int8_turns} turns, float32 and int8 "
               "first in turn; each figure the mean of its turns",
        "images": len(files),
    }


def run_int8_only(args: argparse.Namespace) -> dict:
    """The float32 / int8 comparison alone (--int8-only): a shorter run than the whole benchmark."""
    began = time.monotonic()
    files = make_photos(Path(args.data), args.n, args.seed)
    blobs = [p.read_bytes() for p in files]
    with CpuMeter() as meter, tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        int8 = bench_int8(files, blobs, args, Path(tmp))
    shares = round(meter.result["other_processes_s"] / meter.result["cpu_capacity_s"], 3)
    return {
        "benchmark": "embedding-int8",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "data": {"folder": args.data, "images": len(files), "size": f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}",
                 "made_from": "crops, flips and rescalings of scikit-image's bundled photos"},
        "int8": int8,
        "contention": {"other_processes_cpu_share": shares, "quiet": shares <= QUIET_SHARE,
                       "note": "share of the machine's CPU used by processes outside the benchmark over the run"},
        "wall_s": round(time.monotonic() - began, 1),
    }
