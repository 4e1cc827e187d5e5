"""The phases that drive a real `lookalike serve`: idle and loaded Embed latency, ingest rounds, other store, soak."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    CpuMeter,
    ManagedProcess,
    RssSampler,
    free_port,
    log,
    mib,
    percentiles,
    wait_for_calibration,
)
from embedding_common import VENV_BIN

SETTLE_S = 3.0  # pause after each probed ingest: its flush and recall calibration run in the background


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


def _wait_for_calibration(server: str, collection: str) -> None:
    """Waits for the collection's recall calibration, as every phase does after an ingest; says when none comes."""
    if not wait_for_calibration(server, collection):
        log(f"{collection}: no recall calibration (none within 60 s, or none for a collection this small); going on")


def _serve_command(server: str, work: Path, store: str, args: argparse.Namespace, gpu: bool,
                   card: Path | None = None) -> list[str]:
    """`lookalike serve` on `server` with its data in work and its embedded Milvus as `store` (--milvus-embedded);
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
            _wait_for_calibration(server, vectors_collection)
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
            _wait_for_calibration(server, loaded_collection)
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
        _wait_for_calibration(server, collection)
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
