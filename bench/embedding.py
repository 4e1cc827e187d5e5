"""Embedding throughput: lookalike's Ingest against the hardware limit and against FiftyOne's own path.

Prints one JSON object (images per second unless a field says otherwise); baseline and ours run in the same
run, on the same photos and the same ONNX network, one phase after another so they never share the cores:

  model_only         the ONNX session alone on ready tensors, each batch size, the best one reported
  preprocess_only    the server's decode + preprocess (lookalike_server.imaging.image_to_tensor), all cores
  limit              CPU: 1 / (1/model_only + 1/preprocess_only); GPU: min(model_only, preprocess_only)
  ingest_e2e         the real server (`lookalike serve`, Milvus Lite in its process: --store lite) fed by 8
                     concurrent Ingest streams, files read from disk by the clients, first send to last
                     acknowledgement; the median of 3 rounds (--ingest-rounds)
  ingest_by_store    ingest_e2e once more on a fresh server per other store: Milvus Lite as a child process,
                     `milvus-lite server` (--milvus-embedded lite-server), the way fiftyone_baseline runs it,
                     and the real Milvus standalone server (standalone), the store `serve` starts by default;
                     --skip-store-comparison leaves them out
  ingest_vectors     the same streams sending each photo's embedding instead of the photo: the path without
                     decoding and inference (client, gRPC, event loop, Milvus Lite), and so limit.with_storage,
                     the limit with that path added, which ingest_e2e could reach by overlapping perfectly
  fiftyone_baseline  fob.compute_similarity(dataset, model=<ONNX-wrapping model>, backend="milvus") against
                     `milvus-lite server`, dataset of file paths to ready index (in a child process)
  embed_latency_ms   single-image Embed calls: idle (before the ingests and after them, pooled), one every
                     100 ms during 3 more 8-stream ingests, pooled (--probe-rounds), and in the 3 s after each
                     (flush and recall calibration); server RSS during the streams

Run (after `make setup`; FiftyOne, pymilvus and psutil in the same venv; takes a few minutes on 2 cores):
    .venv/bin/python bench/embedding.py [--n 2000] [--data /tmp/lookalike-bench-photos] [--write]
    [--wait-quiet 900]  wait first for other work on the machine to finish (see "contention" in the JSON)
    [--soak-s 600]      re-ingest the same files for 10 minutes more and report whether the server's RSS stays flat
    [--fp16]            on a GPU: the network in float16, in model_only and in the server (serve --fp16)
    [--int8]            on a CPU: also the int8 card (models/efficientnet-lite0-int8) beside the float32 one,
                        model_only and ingest_e2e of each, in turns, and int8_over_float32 ratios ("int8")
    [--int8-only]       that comparison alone, a shorter run (e.g. --n 1000 --batch-sizes 1,4,8 --ingest-rounds 1)
--write also saves the JSON to bench/results/embedding.json (embedding-gpu[-fp16].json when a GPU provider is active,
embedding-int8.json with --int8-only).

One file per part, this one the driver (arguments, the whole run and its summary, --write):
    embedding_model.py (model_only, preprocess_only), embedding_server.py (`lookalike serve`: ingest, Embed latency,
    RSS, soak, the other store), embedding_fiftyone.py (the FiftyOne baseline and its child process),
    embedding_int8.py (float32 against int8), embedding_common.py (what they share)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_BENCH = Path(__file__).resolve().parent
# Python puts bench/ first on the path; last, a bench module named like a package (bench/fiftyone_backend.py was
# bench/fiftyone.py) cannot shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH] + [str(_BENCH)]
from common import JPEG_QUALITY, PHOTO_SIZE, log, machine_info, make_photos, time_limit  # noqa: E402
from embedding_common import QUIET_SHARE, check, mkdir, ratio  # noqa: E402
from embedding_fiftyone import bench_fiftyone, fiftyone_worker  # noqa: E402
from embedding_int8 import bench_int8, run_int8_only  # noqa: E402
from embedding_model import bench_model_only, bench_preprocess_only  # noqa: E402
from embedding_server import ROUND_FIGURES, bench_other_store, bench_server  # noqa: E402

RESULTS = _BENCH / "results"
CPU_TARGETS = {"ingest_over_limit": 0.90, "ingest_over_fiftyone": 1.2}
GPU_TARGETS = {"ingest_over_limit": 0.80, "ingest_over_fiftyone": 3.0}
INT8_CARD = _BENCH.parent / "models" / "efficientnet-lite0-int8" / "card.toml"
LATENCY_TARGET = 3.0  # p99 under ingest load / idle p99, at most
RSS_TARGET_MB = 1536  # below, during the 8 streams
# ingest_e2e's store (--store), and the ones ingest_by_store compares it with.
OTHER_STORES = {"lite": ("lite-server", "standalone"), "lite-server": ("lite", "standalone"),
                "standalone": ("lite", "lite-server")}


def run(args: argparse.Namespace) -> dict:
    from lookalike_server.config import ServerConfig
    from lookalike_server.model_card import load_model_card

    began = time.monotonic()
    data = Path(args.data)
    log(f"photos: {args.n} in {data}")
    files = make_photos(data, args.n, args.seed)
    blobs = [p.read_bytes() for p in files]
    card = load_model_card()
    max_pixels = ServerConfig().max_image_pixels

    from lookalike_server.imaging import image_to_tensor

    sample = np.stack([image_to_tensor(b, card, max_pixels) for b in blobs[:32]])
    model_only = bench_model_only(card, sample, args.batch_sizes, args.model_min_s, fp16=args.fp16)
    preprocess_only = bench_preprocess_only(card, blobs, max_pixels)
    gpu = model_only["provider"] != "CPUExecutionProvider"

    def limit_of(m: float, p: float) -> float:
        return round(min(m, p), 1) if gpu else round(1 / (1 / m + 1 / p), 1)

    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        work = Path(tmp)
        served = bench_server(files, args, mkdir(work / "server"), gpu)
        by_store = {args.store: {key: served["ingest"][key] for key in ROUND_FIGURES}}
        for other in () if args.skip_store_comparison else OTHER_STORES[args.store]:
            by_store[other] = bench_other_store(files, args, mkdir(work / other), other, gpu)
        # This machine's speed drifts by up to a quarter within minutes (other tenants of its host): the
        # limit is measured again right after the ingest, and the ingest compared with the mean of the two.
        model_after = bench_model_only(card, sample, [model_only["best_batch_size"]], args.model_min_s,
                                       only_layout=model_only["best_layout"], fp16=args.fp16)
        preprocess_after = bench_preprocess_only(card, blobs, max_pixels)
        limit_before = limit_of(model_only["images_per_s"], preprocess_only["images_per_s"])
        limit_after = limit_of(model_after["images_per_s"], preprocess_after["images_per_s"])
        limit = round((limit_before + limit_after) / 2, 1)
        baseline = None if args.skip_fiftyone else bench_fiftyone(
            files, model_only["best_batch_size"], args, mkdir(work / "fiftyone"))
        int8 = bench_int8(files, blobs, args, mkdir(work / "int8")) if args.int8 and not gpu else None

    ingest = served["ingest"]["images_per_s"]
    fiftyone_rate = baseline["images_per_s"] if baseline else None
    targets = GPU_TARGETS if gpu else CPU_TARGETS
    idle_p99, load_p99 = served["latency"]["idle"]["p99"], served["latency"]["under_ingest"]["p99"]
    # The limit with the rest of the path added: on a CPU it shares the cores with decoding and inference;
    # on a GPU with decoding only. ingest_e2e can reach this only if the server overlaps everything perfectly.
    store_rate = served["ingest_vectors"]["images_per_s"]
    preprocess_rate = (preprocess_only["images_per_s"] + preprocess_after["images_per_s"]) / 2
    with_storage = round(min(limit, 1 / (1 / preprocess_rate + 1 / store_rate)), 1) if gpu \
        else round(1 / (1 / limit + 1 / store_rate), 1)
    ratios = {
        "ingest_over_limit": ratio(ingest, limit),
        "ingest_over_limit_with_storage": ratio(ingest, with_storage),
        "ingest_over_limit_by_store": {store: ratio(r["images_per_s"], limit) for store, r in by_store.items()},
        "ingest_over_fiftyone": ratio(ingest, fiftyone_rate),
        "embed_p99_under_ingest_over_idle": ratio(load_p99, idle_p99),
    }
    # The server with the Milvus it started: in-process Milvus Lite counts in the server's own RSS.
    peak_rss = served["rss"]["peak_with_children_mb"]
    fo_ratio, lat_ratio = ratios["ingest_over_fiftyone"], ratios["embed_p99_under_ingest_over_idle"]
    soak = served.get("soak")
    checks = {
        "ingest_over_limit": check(ratios["ingest_over_limit"], ">=", targets["ingest_over_limit"]),
        "ingest_over_fiftyone": check(fo_ratio, ">=", targets["ingest_over_fiftyone"]),
        "embed_p99_under_ingest_over_idle": check(lat_ratio, "<=", LATENCY_TARGET),
        "server_peak_rss_mb": check(peak_rss, "<", RSS_TARGET_MB),
        "server_rss_flat_over_soak": {
            "value": soak["second_half_growth_mb"] if soak else None,
            "target": "second half's median RSS within 5% of the first half's (run with --soak-s 600)",
            "pass": soak["flat"] if soak else None,
        },
        "ingest_all_ok": {"value": served["ingest"]["acknowledged_ok"], "target": f"== {len(files)}, rows too",
                          "pass": served["ingest"]["all_ok"]},
    }
    import lookalike_server

    phases = {"model_only": model_only["cpu"], "preprocess_only": preprocess_only["cpu"],
              "ingest_e2e": served["ingest"]["cpu"], **({"fiftyone_baseline": baseline["cpu"]} if baseline else {})}
    shares = {k: round(v["other_processes_s"] / v["cpu_capacity_s"], 3) for k, v in phases.items()}
    n = len(files)
    limit_cpu = model_only["cpu_ms_per_image_by_batch_size"][str(model_only["best_batch_size"])] + \
        preprocess_only["cpu_ms_per_image"]
    server_cpu = served["ingest"]["cpu"]["watched_process_s"] / n * 1e3
    fiftyone_cpu = (baseline["cpu"]["this_process_s"] + baseline["cpu"]["watched_process_s"]) / n * 1e3 \
        if baseline else None
    ingest_cpu = served["ingest"]["cpu"]
    clients_cpu = ingest_cpu["this_process_s"] / n * 1e3
    others_cpu = ingest_cpu["other_processes_s"] / n * 1e3
    wall_core = ingest_cpu["cpu_capacity_s"] / n * 1e3
    cpu_per_image = {
        "limit": round(limit_cpu, 2),
        "ingest_server": round(server_cpu, 2),
        # Where the cores' time went during ingest_e2e, per image: these four add up to ingest_wall_core.
        "ingest_wall_core": round(wall_core, 2),
        "ingest_clients": round(clients_cpu, 2),
        "ingest_other_processes": round(others_cpu, 2),
        "ingest_idle": round(wall_core - server_cpu - clients_cpu - others_cpu, 2),
        "ingest_server_beyond_limit": round(server_cpu - limit_cpu, 2),
        # ingest_vectors (no decoding, no inference): the cores' time per item, and the server's part of it
        "vectors_wall_core": round(served["ingest_vectors"]["cpu"]["cpu_capacity_s"] / n * 1e3, 2),
        "vectors_server": round(served["ingest_vectors"]["cpu"]["watched_process_s"] / n * 1e3, 2),
        "fiftyone_process_and_milvus": round(fiftyone_cpu, 2) if fiftyone_cpu else None,
        "limit_over_ingest_server": ratio(limit_cpu, server_cpu),
        "fiftyone_over_ingest_server": ratio(fiftyone_cpu, server_cpu),
        "note": "CPU milliseconds spent per image (ORT's spinning threads included): a figure other work on the "
                "machine disturbs far less than images per second; on a CPU, ingest_e2e / limit can reach at most "
                "about limit / ingest_server",
    }
    return {
        "benchmark": "embedding",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "execution_provider": model_only["provider"], "gpu_path": gpu},
        "lookalike_server": getattr(lookalike_server, "__version__", "unknown"),
        "model": {"name": card.name, "file": card.model_path.name, "dimension": card.dimension,
                  "input": f"{card.width}x{card.height}"},
        "data": {"folder": str(data), "images": len(files), "size": f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}",
                 "jpeg_quality": JPEG_QUALITY, "mean_kib": round(sum(map(len, blobs)) / len(blobs) / 1024, 1),
                 "made_from": "crops, flips and rescalings of scikit-image's bundled photos"},
        "model_only": model_only,
        "preprocess_only": preprocess_only,
        "limit": {"images_per_s": limit,
                  "formula": "min(model_only, preprocess_only)" if gpu
                  else "1 / (1/model_only + 1/preprocess_only): both share the cores",
                  "before_ingest": limit_before,
                  "after_ingest": limit_after,
                  "measured_again_after": {"model_only": model_after["images_per_s"],
                                           "preprocess_only": preprocess_after["images_per_s"]},
                  "which": "the mean of the limit measured before the server phase and again right after it",
                  "ingest_over_each": [ratio(ingest, limit_before), ratio(ingest, limit_after)],
                  "with_storage": with_storage,
                  "with_storage_formula": "min(limit, 1 / (1/preprocess_only + 1/ingest_vectors))" if gpu
                  else "1 / (1/limit + 1/ingest_vectors): the path beyond the embedding shares the cores too",
                  "ingest_over_limit_at_most": ratio(with_storage, limit)},
        "ingest_e2e": ingest,
        "fiftyone_baseline": fiftyone_rate,
        "ingest": served["ingest"],
        "ingest_by_store": {
            **by_store,
            "is": "ingest_e2e (the same streams and photos, the median of --ingest-rounds rounds) with each "
                  "embedded store: lite runs Milvus Lite inside the server's own process; lite-server runs Milvus "
                  "Lite's engine as a child process, `milvus-lite server`, as fiftyone_baseline does; standalone "
                  "is the real Milvus standalone server (PyPI milvus) as a child process, serve's default",
        },
        "ingest_vectors": served["ingest_vectors"],
        "fiftyone": baseline or {"skipped": "--skip-fiftyone"},
        "embed_latency_ms": served["latency"],
        "server_peak_rss_mb": peak_rss,
        "server_rss": served["rss"],
        "server_soak": served.get("soak"),
        "server_startup_s": served["startup_s"],
        "ratios": ratios,
        **({"int8": int8} if int8 else {}),
        "cpu_ms_per_image": cpu_per_image,
        "targets": checks,
        "contention": {
            "other_processes_cpu_share": shares,
            "quiet": max(shares.values()) <= QUIET_SHARE,
            "note": "share of the machine's CPU used by processes outside the benchmark during each timed phase "
                    f"(FiftyOne's own mongod counts as outside); above {QUIET_SHARE} the figures are disturbed",
        },
        "wall_s": round(time.monotonic() - began, 1),
    }


def _at_least_one(value: str) -> int:
    if int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default="/tmp/lookalike-bench-photos", help="photo folder (made once, reused)")
    parser.add_argument("--n", type=int, default=2000, help="photos (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--streams", type=int, default=8, help="concurrent Ingest streams (default 8)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 8, 16, 32])
    parser.add_argument("--model-min-s", type=float, default=3.0, help="seconds per batch size in model_only")
    parser.add_argument("--probe-interval-ms", type=float, default=100.0,
                        help="pause between single Embed calls sent during ingest (default 100)")
    parser.add_argument("--idle-calls", type=int, default=200, help="single-image Embed calls when idle")
    parser.add_argument("--probe-rounds", type=int, default=3,
                        help="ingests with Embed calls beside them, for the latency under load (default 3)")
    parser.add_argument("--soak-s", type=float, default=0.0, help="re-ingest this long after, to check RSS is flat")
    parser.add_argument("--skip-fiftyone", action="store_true", help="leave out the FiftyOne baseline")
    parser.add_argument("--ingest-rounds", type=_at_least_one, default=3,
                        help="ingest_e2e is the median of this many rounds, each into a new collection (default 3)")
    parser.add_argument("--store", choices=sorted(OTHER_STORES), default="lite",
                        help="the server's embedded Milvus for ingest_e2e: lite (default: Milvus Lite in the "
                             "server's process), lite-server (`milvus-lite server`, as the FiftyOne baseline runs "
                             "it) or standalone (the Milvus standalone server, serve's default)")
    parser.add_argument("--skip-store-comparison", action="store_true",
                        help="leave out ingest_by_store's other servers (one per other --store)")
    parser.add_argument("--fp16", action="store_true", help="on a GPU: the network in float16 (serve --fp16)")
    parser.add_argument("--int8", action="store_true",
                        help="on a CPU: also model_only and ingest_e2e of the int8 card beside the float32 one")
    parser.add_argument("--int8-only", action="store_true",
                        help="only that float32 / int8 comparison (a short run); --write saves embedding-int8.json")
    parser.add_argument("--int8-card", default=str(INT8_CARD), help="the int8 card (default: the shipped one)")
    parser.add_argument("--int8-turns", type=_at_least_one, default=2,
                        help="measurements of each card in the int8 comparison, alternating (default 2)")
    parser.add_argument("--server-log", help="also copy the server's log to this file")
    parser.add_argument("--stage-timeout", type=float, default=900.0, help="longest one ingest or baseline may run")
    parser.add_argument("--timeout", type=float, default=3600.0, help="longest the whole benchmark may run")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="first wait up to S seconds for the 1-minute load average to drop below 0.5")
    parser.add_argument("--write", action="store_true", help="also save to bench/results/embedding[-gpu].json")
    # The FiftyOne baseline's child process.
    parser.add_argument("--fiftyone-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--fiftyone-uri", help=argparse.SUPPRESS)
    parser.add_argument("--fiftyone-batch-size", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--milvus-pid", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def wait_for_quiet(limit_s: float, load: float = 0.5) -> None:
    """Waits (up to limit_s) until the 1-minute load average drops to load: other work on the machine skews every
    figure, and the contention block of the JSON only says so after the fact."""
    deadline = time.monotonic() + limit_s
    while (current := os.getloadavg()[0]) > load and time.monotonic() < deadline:
        log(f"waiting for a quiet machine: load average {current:.2f}")
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.fiftyone_worker:
        fiftyone_worker(args)
        return
    wait_for_quiet(args.wait_quiet)
    with time_limit(args.timeout):
        result = run_int8_only(args) if args.int8_only else run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.write:
        RESULTS.mkdir(exist_ok=True)
        if args.int8_only:
            name = "embedding-int8"
        else:
            name = ("embedding-gpu" + ("-fp16" if args.fp16 else "")) if result["machine"]["gpu_path"] else "embedding"
        name += ".json"
        (RESULTS / name).write_text(text + "\n")
        log(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
