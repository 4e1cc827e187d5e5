"""What a search costs Milvus while rows wait for their index: CPU per query by unindexed (growing) rows, and by
queries per call.

While Ingest streams write, a collection's newest rows sit in a growing segment that Milvus scans exactly for
every query; they are indexed only once sealed (a stream's end flushes them, or the segment fills). One embedded
Milvus standalone (the one `serve` starts, through lookalike_server.embedded_milvus, with its settings) gets
--indexed rows of random unit 1280-d vectors, flushed and indexed (HNSW, as lookalike creates it); then unflushed
rows are added in steps, and at each step --calls searches (k 10, ef 64) are timed: the Milvus process' CPU per
query (its idle CPU over the same span taken off) and the wall time per call. At the last step the same is
measured with several queries per call. Figures are ratios against the all-indexed collection (or against one
query per call) in the same run.

Run: .venv/bin/python bench/unindexed_rows.py [--write]   (about 3 minutes)
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from pymilvus import DataType, MilvusClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from common import emit, log, machine_info  # noqa: E402

from lookalike_server.embedded_milvus.standalone import MilvusStandalone  # noqa: E402

DIM = 1280
COLLECTION = "unindexed"
INSERT_ROWS = 500


def unit_rows(rng: np.random.Generator, start: int, n: int) -> list[dict[str, Any]]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [{"id": f"r{start + j}", "vector": vectors[j]} for j in range(n)]


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure(client: MilvusClient, milvus: psutil.Process, queries: np.ndarray, calls: int,
            idle_s: float) -> dict[str, float]:
    """CPU per query and wall per call over `calls` searches of len(queries) queries each."""
    started, idle_cpu = time.monotonic(), cpu_s(milvus)
    time.sleep(idle_s)
    idle_rate = (cpu_s(milvus) - idle_cpu) / (time.monotonic() - started)
    data = [q.tolist() for q in queries]
    params = {"params": {"ef": 64}}
    client.search(COLLECTION, data=data, limit=10, search_params=params, consistency_level="Strong")
    cpu_before, started = cpu_s(milvus), time.monotonic()
    for _ in range(calls):
        client.search(COLLECTION, data=data, limit=10, search_params=params, consistency_level="Eventually")
    wall = time.monotonic() - started
    busy = cpu_s(milvus) - cpu_before - idle_rate * wall
    return {"cpu_ms_per_query": round(1e3 * busy / (calls * len(queries)), 2),
            "wall_ms_per_call": round(1e3 * wall / calls, 2), "milvus_idle_cpu": round(idle_rate, 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    queries = rng.standard_normal((max(args.queries_per_call), DIM)).astype(np.float32)
    result: dict[str, Any] = {"by_unindexed_rows": {}, "by_queries_per_call": {}}
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-unindexed-") as tmp, \
            MilvusStandalone(Path(tmp)) as server:
        client = MilvusClient(server.uri)
        milvus = psutil.Process(server.server_pid)
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        index = client.prepare_index_params()
        index.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 128})
        client.create_collection(COLLECTION, schema=schema, index_params=index)
        rows = 0
        while rows < args.indexed:
            client.insert(COLLECTION, unit_rows(rng, rows, INSERT_ROWS))
            rows += INSERT_ROWS
        client.flush(COLLECTION)
        log(f"{rows} rows flushed; waiting {args.index_wait_s:.0f} s for their index")
        time.sleep(args.index_wait_s)
        for unindexed in [0, *args.unindexed]:
            while rows < args.indexed + unindexed:
                client.insert(COLLECTION, unit_rows(rng, rows, INSERT_ROWS))
                rows += INSERT_ROWS
            result["by_unindexed_rows"][str(unindexed)] = measure(client, milvus, queries[:1], args.calls,
                                                                  args.idle_s)
            log(f"{unindexed} unindexed: {result['by_unindexed_rows'][str(unindexed)]}")
        for nq in args.queries_per_call:
            calls = max(10, args.calls // nq)
            result["by_queries_per_call"][str(nq)] = measure(client, milvus, queries[:nq], calls, args.idle_s)
            log(f"{nq} queries per call: {result['by_queries_per_call'][str(nq)]}")
    base = result["by_unindexed_rows"]["0"]["cpu_ms_per_query"]
    most = str(args.unindexed[-1])
    alone = result["by_queries_per_call"][str(args.queries_per_call[0])]["cpu_ms_per_query"]
    result["summary"] = {
        "cpu_per_query_vs_all_indexed": {k: round(v["cpu_ms_per_query"] / base, 2)
                                         for k, v in result["by_unindexed_rows"].items()},
        f"cpu_per_query_vs_one_per_call_at_{most}_unindexed": {
            k: round(v["cpu_ms_per_query"] / alone, 2) for k, v in result["by_queries_per_call"].items()},
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--indexed", type=int, default=5000, help="rows flushed and indexed first")
    parser.add_argument("--unindexed", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 2000, 5000,
                                                                                                10000],
                        help="unflushed rows at each step (ascending)")
    parser.add_argument("--queries-per-call", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16],
                        help="queries per search call at the last step (the first is the baseline)")
    parser.add_argument("--calls", type=int, default=300, help="search calls per step (fewer with more queries)")
    parser.add_argument("--idle-s", type=float, default=3.0, help="Milvus' idle CPU is measured this long first")
    parser.add_argument("--index-wait-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="also save bench/results/unindexed_rows.json")
    args = parser.parse_args(argv)
    figures = run(args)
    out = {
        "benchmark": "unindexed_rows",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"dimension": DIM, "indexed_rows": args.indexed, "index": "HNSW M 16, efConstruction 128; "
                     "searched k 10, ef 64", "vectors": "random unit, IP", "calls": args.calls,
                     "store": "the embedded Milvus standalone as `serve` starts it",
                     "cpu": "the Milvus process' user+system CPU over the calls, less its idle rate"},
        **figures,
    }
    emit(out, "unindexed_rows", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
