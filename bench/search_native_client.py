"""QPS through lookalike from a native client beside the Python one (issue 28): 32 closed-loop Search callers,
by vector, k=10, on one HNSW collection, in alternating phases on the same server.

32 Python client threads take CPU from the server on a 2-core machine; bench/search_load (C++ over the generated
stubs, built by `make clients`) takes far less, so its figure is the fairer server figure. Each phase says how
much CPU each side used. Prints one JSON object; --write merges qps_grpc_<store>_native_client and
qps_grpc_<store>_python_client (this run's Python figure) into bench/results/search.json's summary.

    .venv/bin/python bench/search_native_client.py [--stores lite standalone] [--rows 20000] [--dim 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import CpuMeter, log, machine_info  # noqa: E402
from search_measure import grpc_search, measure_qps  # noqa: E402

from lookalike import Client  # noqa: E402
from lookalike_server.testing import ServerProcess  # noqa: E402

SEARCH_LOAD = REPO / "build" / "clients-cpp" / "bench" / "search_load" / "search_load"
COLLECTION = "native_client_qps"


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fill(address: str, rows: int, dim: int) -> None:
    """A vectors-only HNSW collection of `rows` random unit vectors, calibrated before it is measured."""
    with Client(address, timeout=600) as client:
        client.create_collection(COLLECTION, "cosine", "HNSW", dimension=dim)
        data = unit_rows(rows, dim, seed=1)
        assert all(r.ok for r in client.ingest(((f"r{i}", v) for i, v in enumerate(data)), collection=COLLECTION))
        deadline = time.monotonic() + 600
        while not client.describe_collection(COLLECTION).calibrations and time.monotonic() < deadline:
            client.search(data[0], k=10, collection=COLLECTION)
            time.sleep(1)


def native_phase(address: str, clients: int, seconds: float, server_pid: int) -> dict:
    with CpuMeter(watched_pid=server_pid, tree=True) as cpu:
        out = subprocess.run([str(SEARCH_LOAD), "--server", address, "--collection", COLLECTION, "--threads",
                              str(clients), "--seconds", str(seconds)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    return {"qps": result["qps"], "latency_ms": {"p50": result["p50_ms"], "p99": result["p99_ms"]},
            "errors": result["errors"], "client_cores": result["client_cores"],
            "server_cores": round(cpu.result["watched_process_s"] / cpu.result["wall_s"], 3)}


def python_phase(address: str, clients: int, seconds: float, dim: int, server_pid: int) -> dict:
    queries = unit_rows(1000, dim, seed=2)
    with CpuMeter(watched_pid=server_pid, tree=True) as cpu:
        result = measure_qps(grpc_search(address, COLLECTION, queries, 10), len(queries), clients, 2.0, seconds)
    wall = cpu.result["wall_s"]
    return {**result, "client_cores": round(cpu.result["this_process_s"] / wall, 3),
            "server_cores": round(cpu.result["watched_process_s"] / wall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", nargs="+", default=["lite", "standalone"], choices=["lite", "standalone"])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="python/native phase pairs, alternating")
    parser.add_argument("--write", action="store_true", help="merge the figures into bench/results/search.json")
    args = parser.parse_args()
    if not SEARCH_LOAD.exists():
        raise SystemExit(f"{SEARCH_LOAD} is missing: build it with `make clients`")
    results = {}
    for store in args.stores:
        with tempfile.TemporaryDirectory() as tmp:
            server = ServerProcess(Path(tmp), "--milvus-embedded", store, "--data-dir", str(Path(tmp) / "data"))
            try:
                server.wait_ready(300)
                log(f"{store}: filling {args.rows} x {args.dim}")
                fill(server.address, args.rows, args.dim)
                phases: dict[str, list[dict]] = {"python": [], "native": []}
                for _ in range(args.rounds):
                    phases["python"].append(python_phase(server.address, args.clients, args.seconds, args.dim,
                                                         server.proc.pid))
                    phases["native"].append(native_phase(server.address, args.clients, args.seconds, server.proc.pid))
                    log(f"{store}: python {phases['python'][-1]['qps']} QPS, native {phases['native'][-1]['qps']}")
            finally:
                server.stop()
        results[store] = {side: {"qps": round(float(np.median([p["qps"] for p in runs])), 1), "phases": runs}
                          for side, runs in phases.items()}
        native, python = results[store]["native"]["qps"], results[store]["python"]["qps"]
        results[store]["native_over_python"] = round(native / python, 2)
    report = {"bench": "search_native_client", "clients": args.clients, "rows": args.rows, "dim": args.dim,
              "k": 10, "index": "HNSW", "seconds_per_phase": args.seconds, "machine": machine_info(),
              "stores": results}
    print(json.dumps(report, indent=1))
    if args.write:
        path = REPO / "bench" / "results" / "search.json"
        merged = json.loads(path.read_text())
        summary = merged.setdefault("summary", {})
        for store, figures in results.items():
            summary[f"qps_grpc_{store}_native_client"] = figures["native"]["qps"]
            summary[f"qps_grpc_{store}_python_client_same_run"] = figures["python"]["qps"]
        merged["native_client"] = report
        path.write_text(json.dumps(merged, indent=1) + "\n")


if __name__ == "__main__":
    main()
