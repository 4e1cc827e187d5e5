"""Session reads while writes go on: how long a search waits for Milvus' time tick, by proxy.timeTickInterval.

A Session read (lookalike's default consistency: a server sees its own writes) or a Strong one waits until the
query node has seen a time tick past the newest write; the proxy sends one every proxy.timeTickInterval (Milvus'
default 200 ms). While a server ingests, every search waits for the next tick. For each interval, one embedded
Milvus standalone (the one `serve` starts, through lookalike_server.embedded_milvus) gets a small collection;
then, for --seconds, one thread upserts 20 rows every 100 ms while another searches (k=10, Session) one query
after the other, through the same client (so the search waits for that client's writes, as the server's do).
It also reports the Milvus process' CPU while idle (a loaded collection, nothing running), the price of a shorter
tick. Figures as ratios against Milvus' default (200 ms) in the same run.

Run: .venv/bin/python bench/session_reads.py [--ticks-ms 200,50,20] [--write]   (about 1 minute per tick)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from pymilvus import MilvusClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from common import emit, log, machine_info, percentiles  # noqa: E402

from lookalike_server.embedded_milvus.standalone import MilvusStandalone  # noqa: E402

DIM = 128
ROWS = 5000


def milvus_cpu_s(base_dir: Path) -> float:
    """CPU seconds so far of the milvus binary running in base_dir."""
    total = 0.0
    for p in psutil.process_iter(["exe", "cwd", "cmdline"]):
        with_dir = any(str(base_dir) in part for part in (p.info["cmdline"] or []) + [p.info["cwd"] or ""])
        if (p.info["exe"] or "").endswith("/milvus") and with_dir:
            times = p.cpu_times()
            total += times.user + times.system
    return total


def one_tick(tick_ms: int, seconds: float, idle_s: float) -> dict[str, Any]:
    os.environ["PROXY_TIMETICKINTERVAL"] = str(tick_ms)  # the launcher keeps what the environment says
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-tick-") as tmp:
        base = Path(tmp).resolve()
        with MilvusStandalone(base) as server:
            client = MilvusClient(server.uri)
            client.create_collection("t", dimension=DIM, metric_type="COSINE", auto_id=False, id_type="string",
                                     max_length=64)
            rows = rng.normal(size=(ROWS, DIM)).astype(np.float32)
            client.insert("t", [{"id": str(i), "vector": v.tolist()} for i, v in enumerate(rows)])
            client.flush("t")
            time.sleep(5)
            before = milvus_cpu_s(base)
            time.sleep(idle_s)
            idle_cores = (milvus_cpu_s(base) - before) / idle_s
            stop = threading.Event()

            def writer() -> None:
                n = ROWS
                while not stop.is_set():
                    batch = rng.normal(size=(20, DIM)).astype(np.float32)
                    client.upsert("t", [{"id": str(n + j), "vector": v.tolist()} for j, v in enumerate(batch)])
                    n += 20
                    time.sleep(0.1)

            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            query = rows[:1].tolist()
            latencies = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.perf_counter()
                client.search("t", query, limit=10, consistency_level="Session")
                latencies.append(time.perf_counter() - started)
            stop.set()
            thread.join(10)
            client.close()
    return {"tick_ms": tick_ms, "session_search_ms_while_writing": percentiles(latencies),
            "searches_per_s": round(len(latencies) / seconds, 1), "milvus_idle_cpu_cores": round(idle_cores, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks-ms", default="200,50,20",
                        help="proxy.timeTickInterval values; the first is the baseline")
    parser.add_argument("--seconds", type=float, default=20.0, help="searching while writing, per tick")
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle CPU measured over this long, per tick")
    parser.add_argument("--write", action="store_true", help="also save bench/results/session_reads.json")
    args = parser.parse_args()
    ticks = [int(t) for t in args.ticks_ms.split(",")]
    runs = []
    for tick in ticks:
        log(f"tick {tick} ms")
        runs.append(one_tick(tick, args.seconds, args.idle_s))
        log(json.dumps(runs[-1]))
    base = runs[0]
    for run in runs:
        run["p50_over_baseline"] = round(run["session_search_ms_while_writing"]["p50"]
                                         / base["session_search_ms_while_writing"]["p50"], 3)
        run["p99_over_baseline"] = round(run["session_search_ms_while_writing"]["p99"]
                                         / base["session_search_ms_while_writing"]["p99"], 3)
        run["idle_cpu_cores_over_baseline"] = round(run["milvus_idle_cpu_cores"] / base["milvus_idle_cpu_cores"], 2)
    result = {
        "benchmark": "session_reads",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"rows": ROWS, "dim": DIM, "writes": "20 rows upserted every 100 ms, same client",
                     "search": "k=10, Session, one after another", "seconds": args.seconds, "idle_s": args.idle_s,
                     "baseline_tick_ms": ticks[0]},
        "runs": runs,
    }
    emit(result, "session_reads", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
