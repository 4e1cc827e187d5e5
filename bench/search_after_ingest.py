"""Search latency right after an ingest, on Milvus Lite in the server's process, against the same searches idle.

When an Ingest stream ends the server flushes the collection and measures its recall calibration in the
background; on Milvus Lite that work reads every row back (2-4 s a page at 20,000 x 1280). One server (a fresh
data folder, `--milvus-embedded lite`) gets --rows clustered 1280-d vectors (search.py's Clusters) through 8
Ingest streams (search.py's ingest); from the moment the last stream is acknowledged, one client searches
(k=10, a stored vector plus noise) every --pause-ms until the calibration is reported and --settle-s more
have passed: `after_ingest`. Then the same searches on the same, now calibrated and indexed, collection:
`idle`. Reported: p50/p99/max of both and their ratios, the calibration's duration, and the slowest calls
with their time after the ingest.

Run (after `make setup`; about 2 minutes at the default 20,000 rows):
    .venv/bin/python bench/search_after_ingest.py [--rows 20000] [--write]
--write also saves the JSON to bench/results/search_after_ingest.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ManagedProcess, emit, free_port, installed_server, log, machine_info, percentiles
from search_common import ingest
from search_data import Clusters, random_unit

from lookalike import Client

COLLECTION = "after_ingest"
STREAMS = 8
DIM = 1280  # the default model's: the collection is the model's own, fed precomputed vectors
CLUSTERS = 50


def search_until(client: Client, queries: np.ndarray, pause_s: float, done: Any) -> list[tuple[float, float]]:
    """(seconds since the first call, latency in s) of one search every pause_s until done() says stop."""
    calls: list[tuple[float, float]] = []
    start = time.perf_counter()
    while not done(time.perf_counter() - start, len(calls)):
        began = time.perf_counter()
        hits = client.search(queries[len(calls) % len(queries)], k=10)
        calls.append((began - start, time.perf_counter() - began))
        if len(hits) != 10:
            raise RuntimeError(f"a search returned {len(hits)} hits, not 10")
        time.sleep(pause_s)
    return calls


def run(args: argparse.Namespace) -> dict[str, Any]:
    # Clustered rows, like photos' embeddings (random vectors make HNSW's recall, hence calibration, another test).
    vectors = Clusters.make(random_unit(CLUSTERS, DIM, args.seed), "random centres", args.seed).sample(
        args.rows, args.seed + 1)
    stored = vectors[:: max(1, args.rows // 500)]
    queries = stored + np.random.default_rng(args.seed + 2).standard_normal(stored.shape) * (0.05 / np.sqrt(DIM))
    port = free_port()
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as work:
        command = [str(Path(sys.executable).with_name("lookalike")), "serve", "--address", address,
                   "--data-dir", f"{work}/data", "--milvus-embedded", "lite"]
        with ManagedProcess(command, Path(work) / "server.log") as server:
            with Client(address, timeout=60) as client:
                client.wait_until_ready(timeout=180)
                client.create_collection(COLLECTION)
            log(f"ingesting {args.rows} rows")
            stored_in = ingest(address, COLLECTION, vectors, streams=STREAMS)
            log(f"ingested in {stored_in['seconds']} s; searching until calibrated")
            calibrated_at: list[float] = []
            with Client(address, collection=COLLECTION, timeout=120) as client:

                def after_done(elapsed: float, calls: int) -> bool:
                    if not calibrated_at and calls % 5 == 0 and client.describe_collection(COLLECTION).calibrations:
                        calibrated_at.append(elapsed)
                    if elapsed > args.timeout_s:
                        raise RuntimeError(f"no calibration within {args.timeout_s:.0f} s:\n{server.log_tail()}")
                    return bool(calibrated_at) and elapsed > calibrated_at[0] + args.settle_s

                after = search_until(client, queries, args.pause_ms / 1000, after_done)
                log(f"calibrated after {calibrated_at[0]:.1f} s; {len(after)} searches; now idle")
                idle = search_until(client, queries, args.pause_ms / 1000, lambda _, calls: calls >= args.idle_calls)
    after_ms, idle_ms = percentiles([s for _, s in after]), percentiles([s for _, s in idle])
    return {
        "benchmark": "search_after_ingest",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "server_package": installed_server(),
        "store": "Milvus Lite in the server's process (--milvus-embedded lite)",
        "rows": args.rows,
        "dimension": DIM,
        "search": f"k=10 by vector, one at a time, {args.pause_ms} ms apart",
        "calibration_reported_after_s": round(calibrated_at[0], 1),
        "after_ingest_ms": after_ms,
        "idle_ms": idle_ms,
        "ratios": {
            "p50_after_over_idle": round(after_ms["p50"] / idle_ms["p50"], 2),
            "p99_after_over_idle": round(after_ms["p99"] / idle_ms["p99"], 2),
        },
        "slowest_after_ingest": [
            {"at_s": round(at, 2), "ms": round(s * 1000, 1)} for at, s in sorted(after, key=lambda c: -c[1])[:8]
        ],
        "calls_over_1s_after_ingest": sum(s > 1.0 for _, s in after),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pause-ms", type=int, default=50, help="between searches")
    parser.add_argument("--settle-s", type=float, default=3.0, help="searching on after the calibration is reported")
    parser.add_argument("--idle-calls", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="longest wait for the calibration")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    emit(result, "search_after_ingest", args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
