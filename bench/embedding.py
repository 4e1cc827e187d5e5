"""Embedding throughput: lookalike's Ingest against the hardware limit and against FiftyOne's own path.

Prints one JSON object (images per second unless a field says otherwise); baseline and ours run in the same
run, on the same photos and the same ONNX network, one phase after another so they never share the cores:

  model_only         the ONNX session alone on ready tensors, each batch size, the best one reported
  preprocess_only    the server's decode + preprocess (lookalike_server.imaging.image_to_tensor), all cores
  limit              CPU: 1 / (1/model_only + 1/preprocess_only); GPU: min(model_only, preprocess_only)
  ingest_e2e         the real server (`lookalike serve`, Milvus Lite in its process: --store lite) fed by 8
                     concurrent Ingest streams, files read from disk by the clients, first send to last
                     acknowledgement; the median of 3 rounds (--ingest-rounds)
  ingest_by_store    ingest_e2e once more on a fresh server whose Milvus Lite runs as a child process,
                     `milvus-lite server` (--milvus-embedded lite-server), the way fiftyone_baseline runs it;
                     --skip-store-comparison leaves it out
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
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

_BENCH = Path(__file__).resolve().parent
# Python puts bench/ first on the path, where bench/fiftyone_backend.py would shadow the fiftyone package: move it last.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH] + [str(_BENCH)]
from common import (  # noqa: E402
    JPEG_QUALITY,
    PHOTO_SIZE,
    CpuMeter,
    ManagedProcess,
    RssSampler,
    cores,
    free_port,
    log,
    machine_info,
    make_photos,
    mib,
    percentiles,
    stop_processes_under,
    time_limit,
    wait_for_calibration,
    wait_for_port,
)

RESULTS = _BENCH / "results"
VENV_BIN = Path(sys.executable).parent
CPU_TARGETS = {"ingest_over_limit": 0.90, "ingest_over_fiftyone": 1.2}
GPU_TARGETS = {"ingest_over_limit": 0.80, "ingest_over_fiftyone": 3.0}
INT8_TARGETS = {"model_only": 1.6, "ingest_e2e": 1.3}  # int8 card / float32 card, images per second
INT8_CARD = _BENCH.parent / "models" / "efficientnet-lite0-int8" / "card.toml"
LATENCY_TARGET = 3.0  # p99 under ingest load / idle p99, at most
RSS_TARGET_MB = 1536  # below, during the 8 streams
SETTLE_S = 3.0  # pause after each probed ingest: its flush and recall calibration run in the background
# ingest_e2e's store (--store), and the one ingest_by_store compares it with.
OTHER_STORE = {"lite-server": "lite", "lite": "lite-server"}
QUIET_SHARE = 0.05  # most of the machine's CPU that other processes may use for a run to count as undisturbed
WHY_NOT_TORCH = (
    "FiftyOne's Torch wrappers (fiftyone.utils.torch) need torchvision, and PyPI's torchvision does not import "
    "beside the CPU torch here ('operator torchvision::nms does not exist'); and where both ran (ENVIRONMENT.md) "
    "the uncompiled Torch network was about 5x slower than ONNX Runtime (19-41 vs 83-87 img/s end to end). "
    "So the faster of FiftyOne's two ways is a fiftyone.core.models.Model + EmbeddingsMixin that wraps the same "
    "ONNX file with the same preprocessing, run on batches with all cores."
)


# Model and preprocessing alone


def bench_model_only(card: Any, tensors: np.ndarray, batch_sizes: list[int], min_s: float,
                     only_layout: str = "", fp16: bool = False) -> dict:
    """The server's Embedder on ready tensors, every batch size, all cores, in both layouts that use every core:
    one run over all cores, and (on a CPU) one single-threaded run per core side by side. The best counts.
    only_layout: measure that layout alone (the re-measurement after the server phase)."""
    from lookalike_server.embedder import Embedder

    layouts = {"one_run_all_cores": Embedder(card, device="auto", threads=cores(), fp16=fp16)}
    if not layouts["one_run_all_cores"].on_gpu and cores() > 1:
        layouts["one_run_per_core"] = Embedder(card, device="auto", threads=1)
    if only_layout:
        layouts = {only_layout: layouts[only_layout]}
    by_size: dict[str, dict[str, float]] = {name: {} for name in layouts}
    cpu_ms: dict[str, dict[str, float]] = {name: {} for name in layouts}
    with CpuMeter() as meter:
        for name, embedder in layouts.items():
            runs = cores() if name == "one_run_per_core" else 1
            for size in batch_sizes:
                batch = np.ascontiguousarray(np.resize(tensors, (size, *tensors.shape[1:])))
                embedder.embed(batch)
                embedder.embed(batch)  # warm-up: memory arenas, kernel choice for this shape

                def loop(batch: np.ndarray = batch, embedder: Any = embedder, size: int = size) -> int:
                    images, start = 0, time.perf_counter()
                    while time.perf_counter() - start < min_s or images < 4 * size:
                        embedder.embed(batch)
                        images += size
                    return images

                start, cpu = time.perf_counter(), _own_cpu_s()
                with ThreadPoolExecutor(runs) as pool:
                    images = sum(pool.map(lambda _: loop(), range(runs)))
                elapsed = time.perf_counter() - start
                by_size[name][str(size)] = round(images / elapsed, 1)
                cpu_ms[name][str(size)] = round((_own_cpu_s() - cpu) / images * 1e3, 2)
                log(f"model_only {name} batch {size}: {by_size[name][str(size)]} img/s")
    agreement = _gpu_agreement(card, layouts["one_run_all_cores"], tensors) \
        if layouts.get("one_run_all_cores") and layouts["one_run_all_cores"].on_gpu else None
    best_layout, best = max(((n, s) for n in by_size for s in by_size[n]), key=lambda ns: by_size[ns[0]][ns[1]])
    return {
        "images_per_s": by_size[best_layout][best],
        "best_batch_size": int(best),
        "best_layout": best_layout,
        "by_batch_size": by_size[best_layout],
        "by_layout_and_batch_size": by_size,
        "cpu_ms_per_image_by_batch_size": cpu_ms[best_layout],
        "provider": next(iter(layouts.values())).provider,
        "precision": next(iter(layouts.values())).precision,
        "threads": cores(),
        "cpu": meter.result,
        **({"gpu_agreement": agreement} if agreement else {}),
    }


def _gpu_agreement(card: Any, gpu: Any, tensors: np.ndarray) -> dict:
    """The GPU's embeddings against the CPU's on the same tensors, and one at a time against all at once."""
    from lookalike_server.embedder import Embedder

    def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    together = gpu.embed(tensors)
    one_by_one = np.concatenate([gpu.embed(tensors[i:i + 1]) for i in range(len(tensors))])
    on_cpu = Embedder(card, device="cpu", threads=cores()).embed(tensors)
    return {
        "images": len(tensors),
        "min_cosine_vs_cpu": round(float(cosines(together, on_cpu).min()), 6),
        "max_abs_diff_vs_cpu": float(np.abs(together - on_cpu).max()),
        "min_cosine_batch_1_vs_batch_all": round(float(cosines(one_by_one, together).min()), 6),
        "max_abs_diff_batch_1_vs_batch_all": float(np.abs(one_by_one - together).max()),
    }


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def bench_preprocess_only(card: Any, blobs: list[bytes], max_pixels: int) -> dict:
    """The server's bytes-to-tensor function over every photo in memory, a thread pool of one worker per core."""
    from lookalike_server.imaging import image_to_tensor

    def one(data: bytes) -> int:
        return image_to_tensor(data, card, max_pixels).shape[0]

    with ThreadPoolExecutor(cores()) as pool:
        list(pool.map(one, blobs[: 4 * cores()]))  # warm-up
        with CpuMeter() as meter:
            start = time.perf_counter()
            list(pool.map(one, blobs))
            elapsed = time.perf_counter() - start
    rate = round(len(blobs) / elapsed, 1)
    log(f"preprocess_only: {rate} img/s")
    return {
        "images_per_s": rate,
        "workers": cores(),
        "images": len(blobs),
        "cpu": meter.result,
        "cpu_ms_per_image": round(meter.result["this_process_s"] / len(blobs) * 1e3, 2),
        "function": "lookalike_server.imaging.image_to_tensor (decode + preprocess, from bytes in memory)",
    }


# The server


def _embed_loop(server: str, jpeg: bytes, stop: Any, out: Any, interval_s: float) -> None:
    """Single-image Embed calls, one every interval_s (as a user would send them) until stop; (start, end)
    monotonic times of each, put on the queue `out`. Back to back, the calls would be a load of their own.

    It runs in a process of its own, as another user of the server would: in the process of the 8 ingest
    streams it would also wait for that process's GIL."""
    from lookalike import Client

    times = []
    with Client(server, timeout=60) as client:
        while not stop.wait(interval_s):
            start = time.monotonic()
            client.embed([jpeg])
            times.append((start, time.monotonic()))
    out.put(times)


def _ingest_round(server: str, collection: str, files: list[Path], streams: int, id_prefix: str,
                  timeout_s: float, vectors: np.ndarray | None = None) -> dict:
    """streams concurrent Ingest streams over disjoint shares of files; seconds from first send to last ack.
    vectors: send these (one row per file, under the file's id) instead of the photos."""
    from lookalike import Client

    shares = [range(i, len(files), streams) for i in range(streams)]
    barrier = threading.Barrier(streams + 1)
    results: list[dict] = [{} for _ in range(streams)]

    def stream(i: int) -> None:
        sent: set[str] = set()

        def items() -> Iterator[tuple[str, Any]]:
            for k in shares[i]:  # the client reads each file as gRPC asks for the next request
                item_id = f"{id_prefix}{files[k].name}"
                sent.add(item_id)
                yield item_id, files[k] if vectors is None else vectors[k]

        failed: list[str] = []
        acked: set[str] = set()
        last = 0.0
        try:
            with Client(server, collection=collection, timeout=timeout_s) as client:
                barrier.wait(60)
                for result in client.ingest(items()):
                    last = time.monotonic()
                    acked.add(result.id)
                    if not result.ok:
                        failed.append(f"{result.id}: {result.code} {result.message}")
        except Exception as e:  # reported in the JSON and failed on below
            results[i] = {"error": f"{type(e).__name__}: {e}"}
            return
        results[i] = {"last": last, "acked": acked, "sent": sent, "failed": failed}

    threads = [threading.Thread(target=stream, args=(i,), name=f"ingest-{i}", daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    barrier.wait(60)
    start = time.monotonic()
    deadline = start + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"the {streams} Ingest streams did not finish within {timeout_s:.0f} s")
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"Ingest streams failed: {errors}")
    failed = [f for r in results for f in r["failed"]]
    missing = sum(len(r["sent"] - r["acked"]) for r in results)
    end = max(r["last"] for r in results)
    return {
        "start": start,
        "end": end,
        "seconds": end - start,
        "acknowledged": sum(len(r["acked"]) for r in results),
        "failed": failed[:10],
        "failed_count": len(failed),
        "unacknowledged": missing,
    }


def _wait_rows(client: Any, collection: str, n: int, timeout_s: float) -> tuple[int, float]:
    """Polls the collection's row count until it reaches n; (rows, seconds waited)."""
    start = time.monotonic()
    rows = -1
    while time.monotonic() - start < timeout_s:
        rows = client.describe_collection(collection).row_count
        if rows >= n:
            break
        time.sleep(0.5)
    return rows, round(time.monotonic() - start, 2)


def bench_server(files: list[Path], args: argparse.Namespace, work: Path, gpu: bool) -> dict:
    """Starts `lookalike serve`, measures idle Embed latency, then the 8 Ingest streams with latency and RSS.
    gpu: model_only ran on a GPU, so the server must embed there too, or refuse to start (--require-gpu)."""
    server = f"127.0.0.1:{free_port()}"
    command = _serve_command(server, work, args.store, args, gpu)
    try:
        return _serve_and_measure(command, files, files[0].read_bytes(), args, work, server)
    finally:
        if args.server_log and (work / "server.log").is_file():  # for a look at a failure on a borrowed machine
            Path(args.server_log).write_bytes((work / "server.log").read_bytes())


def _serve_command(server: str, work: Path, store: str, args: argparse.Namespace, gpu: bool,
                   card: Path | None = None) -> list[str]:
    """`lookalike serve` on `server` with its data in work and Milvus Lite run as `store` (--milvus-embedded);
    card: the model card to serve instead of the default."""
    return [str(VENV_BIN / "lookalike"), "serve", "--address", server, "--data-dir", str(work / "lookalike-data"),
            "--milvus-embedded", store, *(["--fp16"] if args.fp16 else []), *(["--require-gpu"] if gpu else []),
            *(["--model-card", str(card)] if card else [])]


def _serve_and_measure(command: list[str], files: list[Path], jpeg: bytes, args: argparse.Namespace, work: Path,
                       server: str) -> dict:
    """bench_server's measurements, on the server that command starts."""
    from lookalike import Client

    out: dict[str, Any] = {}
    with ManagedProcess(command, work / "server.log") as proc, Client(server, timeout=60) as client:
        out["startup_s"] = _wait_ready(client, proc)
        rss = RssSampler(proc.pid).start()
        try:
            _idle_embeds(client, jpeg, 10)  # warm-up: first inference, channel
            idle = _idle_embeds(client, jpeg, args.idle_calls)
            log(f"idle Embed p50/p99: {percentiles(idle)['p50']}/{percentiles(idle)['p99']} ms; "
                f"ingesting {len(files)} photos over {args.streams} streams, {args.ingest_rounds} times")

            # ingest_e2e alone first; then the same photos again, --probe-rounds times, each into a new
            # collection, with single Embed calls sent beside them, for the latency under load.
            rounds = _ingest_rounds(server, client, proc.pid, files, args)
            ingest = _median_round(rounds)
            collection = rounds[0]["collection"]
            info = client.describe_collection(collection)
            # The same streams with the embedding left out: each photo's embedding (as this ingest stored it) in
            # place of the photo, into a new collection. Everything else of the path (client, gRPC, the server's
            # event loop, Milvus Lite's upserts) still runs on these cores: this prices the rest of ingest_e2e.
            stored_rows: dict[str, Any] = {}
            for start in range(0, len(files), 200):
                stored_rows.update(client.get([p.name for p in files[start:start + 200]], collection, metadata=False))
            vectors = np.stack([stored_rows[p.name][0] for p in files])
            vectors_collection = client.create_collection(f"{collection}_vectors").name
            with CpuMeter(proc.pid, tree=True) as vectors_meter:
                stored = _ingest_round(server, vectors_collection, files, args.streams, "", args.stage_timeout,
                                       vectors=vectors)
            out["ingest_vectors"] = {
                "images_per_s": round(len(files) / stored["seconds"], 1),
                "seconds": round(stored["seconds"], 2),
                "all_ok": stored["acknowledged"] - stored["failed_count"] == len(files),
                "is": f"the same {args.streams} Ingest streams sending each photo's {info.dimension}-d embedding "
                      "(as the ingest above stored it) instead of the photo: the path without decoding and inference",
                "cpu": vectors_meter.result,
            }
            if not wait_for_calibration(server, vectors_collection):
                log(f"{vectors_collection}: no recall calibration within 60 s; going on")
            spawn = multiprocessing.get_context("spawn")
            stop, times = spawn.Event(), spawn.Queue()
            prober = spawn.Process(target=_embed_loop, daemon=True,
                                   args=(server, jpeg, stop, times, args.probe_interval_ms / 1000))
            prober.start()
            probed_rounds: list[dict] = []
            loaded_collection = vectors_collection  # the last one written to
            try:
                time.sleep(3)  # the prober's start-up (imports, channel) must not fall inside the ingest
                for round_no in range(args.probe_rounds):
                    loaded_collection = client.create_collection(f"{collection}_probe{round_no}").name
                    probed_rounds.append(_ingest_round(server, loaded_collection, files, args.streams, "",
                                                       args.stage_timeout))
                    time.sleep(SETTLE_S)  # as before the first: the last round's flush and calibration settle
            finally:
                stop.set()
                under_load: list[tuple[float, float]] = times.get(timeout=60)
                prober.join(60)
            # Idle again, once the last probed ingest's background work is done: the machine's speed drifts (the
            # limit is measured twice for the same reason), and the under-load calls fall between the two.
            if not wait_for_calibration(server, loaded_collection):
                log(f"{loaded_collection}: no recall calibration within 60 s; going on")
            idle_after = _idle_embeds(client, jpeg, args.idle_calls)
            during = [s for r in rounds for s in rss.window(r["start"], r["end"])] or [rss.sample() or (0.0, 0, 0)]
            # (round, seconds into that round's ingest, latency) of each call made wholly inside an ingest
            probes = [(i, s - r["start"], e - s) for i, r in enumerate(probed_rounds) for s, e in under_load
                      if r["start"] <= s and e <= r["end"]]
            loaded = [took for _, _, took in probes]
            # calls made wholly in the SETTLE_S after a probed round: the server flushes the new collection and
            # measures its recall calibration in the background then
            settling = [e - s for r in probed_rounds for s, e in under_load
                        if r["end"] <= s and e <= r["end"] + SETTLE_S]
            summary = _rounds_summary(rounds, len(files))
            log(f"ingest_e2e: {summary['images_per_s']} img/s ({ingest['seconds']:.1f} s, the median of "
                f"{len(rounds)} rounds), {len(loaded)} Embed calls under {len(probed_rounds)} more ingests")
            ok = ingest["acknowledged"] - ingest["failed_count"]
            out["ingest"] = {
                **summary,
                "which": f"the median of {len(rounds)} rounds, each into a new collection once the last one's "
                         "flush and recall calibration had finished",
                "streams": args.streams,
                "images": len(files),
                "acknowledged_ok": ok,
                "failed": ingest["failed"],
                "unacknowledged": ingest["unacknowledged"],
                "row_count": ingest["rows"],
                "row_count_waited_s": ingest["rows_waited_s"],
                "collection": {"metric": info.metric, "index": info.index_type, "provider": info.execution_provider},
                "milvus": f"--milvus-embedded {args.store}",
                "client_reads_files": True,
                # cpu: this_process is the 8 client streams; watched_process the server and the Milvus it started
            }
            out["latency"] = {
                "idle": percentiles(idle + idle_after),
                "idle_is": f"{len(idle)} calls before the ingests and {len(idle_after)} after them, pooled",
                "idle_before": percentiles(idle),
                "idle_after": percentiles(idle_after),
                # the calls of every probed round together: one round's ~110 calls make its p99 the second
                # slowest call, which one start-up stall decides (2.1x to 5.3x idle in single rounds, 2026-11-28)
                "under_ingest": percentiles(loaded),
                "under_ingest_p99_per_round": [
                    percentiles([took for i, _, took in probes if i == round_no])["p99"]
                    for round_no in range(len(probed_rounds))],
                "slowest_under_ingest": [{"round": i, "at_s": round(at, 2), "ms": round(took * 1e3, 1)}
                                         for i, at, took in sorted(probes, key=lambda p: -p[2])[:8]],
                "after_ingest": percentiles(settling),
                "after_ingest_is": f"the calls in the {SETTLE_S:g} s after each probed ingest, while the server "
                                   "flushes the new collection and measures its recall calibration",
                "probe": f"one single-image Embed call every {args.probe_interval_ms:g} ms (after the previous "
                         f"answer) during {len(probed_rounds)} more {args.streams}-stream ingests of the same "
                         f"photos, each into a new collection, at "
                         f"{[round(len(files) / r['seconds'], 1) for r in probed_rounds]} img/s",
            }
            out["rss"] = {
                "peak_mb": mib(max(s[1] for s in during)),
                "peak_with_children_mb": mib(max(s[2] for s in during)),
                "at_ingest_start_mb": mib(during[0][1]),
                "at_ingest_end_mb": mib(during[-1][1]),
                "after_startup_mb": mib(rss.samples[0][1]) if rss.samples else None,
            }
            if args.soak_s > 0:
                out["soak"] = _soak(server, collection, files, args, rss)
        finally:
            rss.stop()
        code = proc.stop()
        out["exit_code"] = code
    return out


def _idle_embeds(client: Any, jpeg: bytes, calls: int) -> list[float]:
    """Seconds each of `calls` single-image Embed calls took, one after another, on an otherwise idle server."""
    took = []
    for _ in range(calls):
        start = time.perf_counter()
        client.embed([jpeg])
        took.append(time.perf_counter() - start)
    return took


def bench_other_store(files: list[Path], args: argparse.Namespace, work: Path, store: str, gpu: bool) -> dict:
    """ingest_e2e once more, alone, on a fresh server that stores in `store` (another --milvus-embedded)."""
    from lookalike import Client

    server = f"127.0.0.1:{free_port()}"
    command = _serve_command(server, work, store, args, gpu)
    with ManagedProcess(command, work / "server.log") as proc, Client(server, timeout=60) as client:
        _wait_ready(client, proc)
        _idle_embeds(client, files[0].read_bytes(), 10)  # warm-up, as before ingest_e2e
        rounds = _ingest_rounds(server, client, proc.pid, files, args)
        proc.stop()
    summary = _rounds_summary(rounds, len(files))
    log(f"ingest_e2e with --milvus-embedded {store}: {summary['images_per_s']} img/s")
    return summary


def _wait_ready(client: Any, proc: ManagedProcess) -> float:
    """Seconds until the server reports SERVING; its log's tail in the error if it never does."""
    start = time.monotonic()
    try:
        client.wait_until_ready(timeout=180)
    except TimeoutError as e:
        raise RuntimeError(f"{e}\nserver log:\n{proc.log_tail()}") from None
    return round(time.monotonic() - start, 2)


def _ingest_rounds(server: str, client: Any, server_pid: int, files: list[Path],
                   args: argparse.Namespace) -> list[dict]:
    """--ingest-rounds 8-stream ingests of the photos, each into a new collection and each once the last one's
    flush and recall calibration (background work after every ingest) have finished; each with its CPU split."""
    rounds = []
    for round_no in range(args.ingest_rounds):
        collection = client.create_collection(f"bench_{os.getpid()}_{int(time.time())}_{round_no}").name
        with CpuMeter(server_pid, tree=True) as meter:
            result = _ingest_round(server, collection, files, args.streams, "", args.stage_timeout)
        rows, waited = _wait_rows(client, collection, len(files), 60)
        rounds.append({**result, "collection": collection, "rows": rows, "rows_waited_s": waited, "cpu": meter.result})
        log(f"ingest round {round_no}: {len(files) / result['seconds']:.1f} img/s")
        if not wait_for_calibration(server, collection):
            log(f"{collection}: no recall calibration within 60 s; going on")
    return rounds


def ingest_on_new_server(command: list[str], server: str, folder: Path, files: list[Path],
                         args: argparse.Namespace, env: dict[str, str] | None = None) -> dict:
    """_rounds_summary of --ingest-rounds ingests on the server that command starts at `server` (its log in
    folder), after 10 single Embed calls of warm-up as before ingest_e2e; the server is stopped after."""
    from lookalike import Client

    with ManagedProcess(command, folder / "server.log", env) as proc, Client(server, timeout=60) as client:
        _wait_ready(client, proc)
        _idle_embeds(client, files[0].read_bytes(), 10)
        rounds = _ingest_rounds(server, client, proc.pid, files, args)
        proc.stop()
    return _rounds_summary(rounds, len(files))


def _median_round(rounds: list[dict]) -> dict:
    """The round of median speed (of an even number, the slower of the middle two)."""
    return sorted(rounds, key=lambda r: r["seconds"])[len(rounds) // 2]


# What ingest_by_store reports of each store's rounds (ingest reports these and more).
ROUND_FIGURES = ("images_per_s", "seconds", "rounds_images_per_s", "all_ok", "cpu")


def _rounds_summary(rounds: list[dict], images: int) -> dict:
    """ROUND_FIGURES of _ingest_rounds' rounds: the median round's speed, seconds and CPU; every round's speed;
    whether every round stored every image."""
    median = _median_round(rounds)
    return {
        "images_per_s": round(images / median["seconds"], 1),
        "seconds": round(median["seconds"], 2),
        "rounds_images_per_s": [round(images / r["seconds"], 1) for r in rounds],
        "all_ok": all(r["acknowledged"] - r["failed_count"] == images and r["rows"] == images for r in rounds),
        "cpu": median["cpu"],
    }


def _soak(server: str, collection: str, files: list[Path], args: argparse.Namespace, rss: RssSampler) -> dict:
    """Re-ingests the same ids (replacing rows) until soak_s has passed; the RSS of the server and the Milvus it
    started (with --store lite-server), after every round."""
    start = time.monotonic()
    rounds: list[dict] = []
    while time.monotonic() - start < args.soak_s:
        result = _ingest_round(server, collection, files, args.streams, "", args.stage_timeout)
        point = rss.sample()
        rounds.append({
            "t_s": round(time.monotonic() - start, 1),
            "images_per_s": round(len(files) / result["seconds"], 1),
            "rss_mb": mib(point[2]) if point else None,
            "failed": result["failed_count"],
        })
        log(f"soak round {len(rounds)}: {rounds[-1]}")
    end = time.monotonic()
    rss_values = [r["rss_mb"] for r in rounds if r["rss_mb"] is not None]
    half = len(rss_values) // 2
    peak_growth = (max(rss_values[half:]) - max(rss_values[:half])) if half else 0.0
    # The RSS swings by a few hundred MB within a round (Milvus Lite's segments and index builds), so one high
    # sample decides a comparison of peaks. A leak raises the typical level:
    # flat means the median of the second half's samples (every 0.1 s) within 5% of the first half's.
    samples = rss.window(start, end)
    seconds = np.array([s[0] - start for s in samples])
    mbs = np.array([mib(s[2]) for s in samples])
    first, second = mbs[seconds < (end - start) / 2], mbs[seconds >= (end - start) / 2]
    medians = [float(np.median(first)), float(np.median(second))] if len(first) and len(second) else None
    slope = float(np.polyfit(seconds, mbs, 1)[0]) * 60 if len(samples) > 2 else None
    return {
        "seconds": round(end - start, 1),
        "rounds": rounds,
        "peak_mb": float(mbs.max()) if len(mbs) else None,
        "median_mb_by_half": [round(m, 1) for m in medians] if medians else None,
        "second_half_growth_mb": round(medians[1] - medians[0], 1) if medians else None,
        "trend_mb_per_minute": round(slope, 2) if slope is not None else None,
        "second_half_peak_growth_mb": round(peak_growth, 1),
        "flat": medians is not None and medians[1] - medians[0] <= 0.05 * medians[0],
    }


# FiftyOne's own path (runs in a child process: its own mongod, its own imports)


def _fiftyone_model(card: Any, threads: int) -> Any:
    """A FiftyOne image model that runs the card's ONNX file on batches (all cores) with the card's preprocessing."""
    import fiftyone.core.models as fom
    import onnxruntime as ort
    from PIL import Image

    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}[card.interpolation]
    mean = np.asarray(card.mean, dtype=np.float32)
    std = np.asarray(card.std, dtype=np.float32)

    class OnnxEmbeddingModel(fom.Model, fom.EmbeddingsMixin):
        """What a FiftyOne user writes to embed with an ONNX file: preprocess each array, run the batch."""

        def __init__(self) -> None:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            providers = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]
            self.session = ort.InferenceSession(str(card.model_path), options,
                                                providers=[*providers, "CPUExecutionProvider"])
            self._preprocess = True
            self.preprocess_s = 0.0
            self.network_s = 0.0
            self.images = 0

        @property
        def media_type(self) -> str:
            return "image"

        @property
        def ragged_batches(self) -> bool:
            return False

        @property
        def transforms(self) -> None:
            return None

        @property
        def preprocess(self) -> bool:
            return self._preprocess

        @preprocess.setter
        def preprocess(self, value: bool) -> None:
            self._preprocess = value

        @property
        def has_embeddings(self) -> bool:
            return True

        def _tensor(self, arr: np.ndarray) -> np.ndarray:
            img = Image.fromarray(arr).convert("RGB")
            if card.resize == "stretch":
                img = img.resize((card.width, card.height), resample)
            else:
                scale = card.resize_to / min(img.width, img.height)
                size = (max(card.width, round(img.width * scale)), max(card.height, round(img.height * scale)))
                img = img.resize(size, resample)
                left, top = (img.width - card.width) // 2, (img.height - card.height) // 2
                img = img.crop((left, top, left + card.width, top + card.height))
            pixels = (np.asarray(img, dtype=np.float32) - mean) / std
            return pixels.transpose(2, 0, 1)

        def embed_all(self, args: Any) -> np.ndarray:
            t0 = time.perf_counter()
            batch = np.ascontiguousarray(np.stack([self._tensor(a) for a in args]), dtype=np.float32)
            t1 = time.perf_counter()
            (out,) = self.session.run([card.output_name], {card.input_name: batch})
            self.preprocess_s += t1 - t0
            self.network_s += time.perf_counter() - t1
            self.images += len(batch)
            return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)

        def embed(self, arg: Any) -> np.ndarray:
            return self.embed_all([arg])[0]

        def predict(self, arg: Any) -> np.ndarray:
            return self.embed(arg)

        def predict_all(self, args: Any) -> np.ndarray:
            return self.embed_all(args)

    return OnnxEmbeddingModel()


def fiftyone_worker(args: argparse.Namespace) -> None:
    """In a child process: dataset of file paths, then compute_similarity with the Milvus backend; JSON on stdout."""
    import fiftyone as fo
    import fiftyone.brain as fob

    from lookalike_server.model_card import load_model_card

    files = [Path(line) for line in Path(args.files).read_text().splitlines() if line]
    card = load_model_card()
    model = _fiftyone_model(card, cores())
    t0 = time.monotonic()
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in files])
    t1 = time.monotonic()
    with CpuMeter(args.milvus_pid) as meter:
        results = fob.compute_similarity(
            dataset, model=model, backend="milvus", uri=args.fiftyone_uri, brain_key="bench",
            batch_size=args.fiftyone_batch_size, progress=False,
        )
    t2 = time.monotonic()
    rows = results.total_index_size
    hits = dataset.sort_by_similarity(dataset.first().id, brain_key="bench", k=3)  # the index answers
    answered = len(hits)
    results.cleanup()
    dataset.delete_brain_run("bench")
    dataset.delete()
    try:
        import torchvision  # noqa: F401

        torch_note = "torchvision imports here; the ONNX-wrapping model was still used (see why_onnx)"
    except Exception as e:  # any import failure is the fact being reported
        torch_note = f"import torchvision fails here: {type(e).__name__}: {str(e)[:200]}"
    seconds = t2 - t1
    network, preprocess = model.network_s, model.preprocess_s
    print(json.dumps({
        "images_per_s": round(len(files) / seconds, 1),
        "seconds": round(seconds, 2),
        "dataset_creation_s": round(t1 - t0, 2),
        "index_rows": rows,
        "query_answered": answered == 3,
        "model": "fiftyone.core.models.Model + EmbeddingsMixin wrapping the same ONNX file, same preprocessing, "
                 f"onnxruntime {model.session.get_providers()[0]} with {cores()} threads, batches of "
                 f"{args.fiftyone_batch_size}",
        "reader": "FiftyOne's own (fiftyone.utils.image.read, OpenCV), one image at a time in the main thread",
        "why_onnx": WHY_NOT_TORCH,
        "torchvision": torch_note,
        "breakdown_s": {
            "network": round(network, 2),
            "preprocess_from_array": round(preprocess, 2),
            "jpeg_read_mongo_milvus_rest": round(seconds - network - preprocess, 2),
        },
        # this_process: FiftyOne's Python process; watched_process: milvus-lite server; other: mongod and the rest
        "cpu": meter.result,
        "fiftyone": fo.__version__,
        "fiftyone_brain": importlib.metadata.version("fiftyone-brain"),
    }))


def bench_fiftyone(files: list[Path], batch_size: int, args: argparse.Namespace, work: Path) -> dict:
    """Starts `milvus-lite server` and runs fiftyone_worker in a child with a temp database; stops both after."""
    port = free_port()
    milvus = [str(VENV_BIN / "milvus-lite"), "server", "--data-dir", str(work / "milvus-lite"),
              "--host", "127.0.0.1", "--port", str(port)]
    list_file = work / "files.txt"
    list_file.write_text("\n".join(str(p) for p in files))
    db_dir = work / "fiftyone-db"
    env = {
        **os.environ,
        "FIFTYONE_DATABASE_DIR": str(db_dir),
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_SHOW_PROGRESS_BARS": "false",
        "FIFTYONE_DATASET_ZOO_DIR": str(work / "fiftyone-zoo"),
        "FIFTYONE_MODEL_ZOO_DIR": str(work / "fiftyone-models"),
    }
    worker = [sys.executable, __file__, "--fiftyone-worker", "--files", str(list_file),
              "--fiftyone-uri", f"http://127.0.0.1:{port}", "--fiftyone-batch-size", str(batch_size)]
    try:
        with ManagedProcess(milvus, work / "milvus-lite.log") as server:
            wait_for_port(port, server, 120)
            log(f"fiftyone_baseline: milvus-lite server on port {port}, batch size {batch_size}")
            worker += ["--milvus-pid", str(server.pid)]
            try:
                done = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=args.stage_timeout,
                                      check=False, start_new_session=True)
            except subprocess.TimeoutExpired as e:
                raise TimeoutError(f"the FiftyOne baseline did not finish within {args.stage_timeout:.0f} s") from e
            (work / "fiftyone.log").write_text(done.stderr)
            if done.returncode != 0:
                raise RuntimeError(f"the FiftyOne baseline failed ({done.returncode}):\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        leftovers = stop_processes_under(str(db_dir))  # mongod outliving its Python parent
        if leftovers:
            log(f"stopped leftover FiftyOne processes {leftovers}")
    log(f"fiftyone_baseline: {result['images_per_s']} img/s ({result['seconds']} s)")
    return result


# float32 against int8


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
            folder = _mkdir(work / f"{name}-{turn}")
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
    ratios = {phase: _ratio(out["int8"][phase]["images_per_s"], out["float32"][phase]["images_per_s"])
              for phase in ("model_only", "ingest_e2e")}
    # CPU time per image is far less disturbed by other work on the machine than images per second.
    cpu_ms = {name: sum(r["cpu_ms_per_image_by_batch_size"][str(r["best_batch_size"])] for r in runs) / len(runs)
              for name, runs in model_runs.items()}
    ratios["model_only_cpu_ms_float32_over_int8"] = _ratio(cpu_ms["float32"], cpu_ms["int8"])
    ratios["ingest_e2e_server_cpu_s_float32_over_int8"] = _ratio(
        sum(r["cpu"]["watched_process_s"] for r in ingest_runs["float32"]),
        sum(r["cpu"]["watched_process_s"] for r in ingest_runs["int8"]))
    return {
        **out,
        "int8_over_float32": ratios,
        "targets": {phase: _check(ratios[phase], ">=", target) for phase, target in INT8_TARGETS.items()},
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


# The whole run


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


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
        served = bench_server(files, args, _mkdir(work / "server"), gpu)
        other_store = OTHER_STORE[args.store]
        by_store = {args.store: {key: served["ingest"][key] for key in ROUND_FIGURES}}
        if not args.skip_store_comparison:
            by_store[other_store] = bench_other_store(files, args, _mkdir(work / other_store), other_store, gpu)
        # This machine's speed drifts by up to a quarter within minutes (other tenants of its host): the
        # limit is measured again right after the ingest, and the ingest compared with the mean of the two.
        model_after = bench_model_only(card, sample, [model_only["best_batch_size"]], args.model_min_s,
                                       only_layout=model_only["best_layout"], fp16=args.fp16)
        preprocess_after = bench_preprocess_only(card, blobs, max_pixels)
        limit_before = limit_of(model_only["images_per_s"], preprocess_only["images_per_s"])
        limit_after = limit_of(model_after["images_per_s"], preprocess_after["images_per_s"])
        limit = round((limit_before + limit_after) / 2, 1)
        baseline = None if args.skip_fiftyone else bench_fiftyone(
            files, model_only["best_batch_size"], args, _mkdir(work / "fiftyone"))
        int8 = bench_int8(files, blobs, args, _mkdir(work / "int8")) if args.int8 and not gpu else None

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
        "ingest_over_limit": _ratio(ingest, limit),
        "ingest_over_limit_with_storage": _ratio(ingest, with_storage),
        "ingest_over_limit_by_store": {store: _ratio(r["images_per_s"], limit) for store, r in by_store.items()},
        "ingest_over_fiftyone": _ratio(ingest, fiftyone_rate),
        "embed_p99_under_ingest_over_idle": _ratio(load_p99, idle_p99),
    }
    # The server with the Milvus it started: in-process Milvus Lite counts in the server's own RSS.
    peak_rss = served["rss"]["peak_with_children_mb"]
    fo_ratio, lat_ratio = ratios["ingest_over_fiftyone"], ratios["embed_p99_under_ingest_over_idle"]
    soak = served.get("soak")
    checks = {
        "ingest_over_limit": _check(ratios["ingest_over_limit"], ">=", targets["ingest_over_limit"]),
        "ingest_over_fiftyone": _check(fo_ratio, ">=", targets["ingest_over_fiftyone"]),
        "embed_p99_under_ingest_over_idle": _check(lat_ratio, "<=", LATENCY_TARGET),
        "server_peak_rss_mb": _check(peak_rss, "<", RSS_TARGET_MB),
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
        "limit_over_ingest_server": _ratio(limit_cpu, server_cpu),
        "fiftyone_over_ingest_server": _ratio(fiftyone_cpu, server_cpu),
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
                  "ingest_over_each": [_ratio(ingest, limit_before), _ratio(ingest, limit_after)],
                  "with_storage": with_storage,
                  "with_storage_formula": "min(limit, 1 / (1/preprocess_only + 1/ingest_vectors))" if gpu
                  else "1 / (1/limit + 1/ingest_vectors): the path beyond the embedding shares the cores too",
                  "ingest_over_limit_at_most": _ratio(with_storage, limit)},
        "ingest_e2e": ingest,
        "fiftyone_baseline": fiftyone_rate,
        "ingest": served["ingest"],
        "ingest_by_store": {
            **by_store,
            "is": "ingest_e2e (the same streams and photos, the median of --ingest-rounds rounds) with each "
                  "embedded Milvus Lite: lite-server runs Milvus Lite's engine (pure Python) as a child process, "
                  "`milvus-lite server`, as fiftyone_baseline does; lite runs it inside the server's own process",
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


def _check(value: float | None, op: str, target: float) -> dict:
    """A figure beside its target; pass is None when the figure could not be measured."""
    passed = None if value is None else {">=": value >= target, "<=": value <= target, "<": value < target}[op]
    return {"value": value, "target": f"{op} {target}", "pass": passed}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    parser.add_argument("--store", choices=sorted(OTHER_STORE), default="lite",
                        help="the server's embedded Milvus Lite for ingest_e2e: lite (default: in the server's "
                             "process) or lite-server (`milvus-lite server`, as the FiftyOne baseline runs it)")
    parser.add_argument("--skip-store-comparison", action="store_true",
                        help="leave out ingest_by_store's second server (with the other --store)")
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
