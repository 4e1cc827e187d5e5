"""The recall guarantee on a busy machine (issue 22): every index type, many rounds, both cores held by busy loops.

Each round creates one collection per index type on one `lookalike serve`, ingests fresh random unit vectors,
waits for each collection's recall calibration, then searches new random queries and counts the true top 10
found. A round fails for an index when that recall is under the collection's target (0.99). Prints one JSON
object: per store and index, the runs, the failures, the recalls, and the calibrations they had.

    .venv/bin/python bench/recall_under_load.py --store standalone --rounds 20
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ManagedProcess, free_port, log, machine_info

INDEXES = {"lite": ["HNSW", "IVF_FLAT", "IVF_SQ8"], "standalone": ["HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "SCANN"]}
TARGET = 0.99


def busy_loops(count: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    """CPU hogs, one per core asked for, each ending by itself after `seconds`."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def unit_rows(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def one_round(client, indexes: list[str], round_no: int, rows: int, dim: int, queries: int) -> dict[str, dict]:
    rng = np.random.default_rng(1000 + round_no)
    data, names = {}, {}
    for index in indexes:
        names[index] = f"busy_{index.lower()}_{round_no}"
        params = {} if index == "HNSW" else {"nlist": 16}
        client.create_collection(names[index], "ip", index, dimension=dim, index_params=params)
        data[index] = unit_rows(rows, dim, rng)
        ids = [f"p{i}" for i in range(rows)]
        assert all(r.ok for r in client.ingest(zip(ids, data[index], strict=True), collection=names[index]))
    deadline = time.monotonic() + 600
    pending = set(indexes)
    while pending and time.monotonic() < deadline:
        pending = {i for i in pending if not client.describe_collection(names[i]).calibrations}
        time.sleep(1)
    results = {}
    for index in indexes:
        calibrations = client.describe_collection(names[index]).calibrations
        probes = unit_rows(queries, dim, rng)
        found = 0
        for q, hits in zip(probes, client.search_many(list(probes), k=10, collection=names[index]), strict=True):
            truth = set(np.argsort(-(data[index] @ q))[:10].tolist())
            found += len(truth & {int(h.id[1:]) for h in hits})
        recall = found / (10 * queries)
        results[index] = {"recall": recall, "calibrated": bool(calibrations),
                          "calibration": {str(k): list(v) for k, v in calibrations.items()}}
        client.drop_collection(names[index])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=sorted(INDEXES), default="standalone")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--busy", type=int, default=2, help="busy loops beside the server (one per core here)")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--indexes", nargs="*", default=None)
    args = parser.parse_args()
    from lookalike import Client

    indexes = args.indexes or INDEXES[args.store]
    port = free_port()
    runs: dict[str, list[dict]] = {i: [] for i in indexes}
    with tempfile.TemporaryDirectory() as tmp:
        serve = [str(Path(sys.executable).with_name("lookalike")), "serve", "--address", f"127.0.0.1:{port}",
                 "--data-dir", str(Path(tmp) / "data"), "--milvus-embedded", args.store]
        with ManagedProcess(serve, Path(tmp) / "server.log") as server, Client(f"127.0.0.1:{port}") as client:
            client.wait_until_ready(180)
            hogs = busy_loops(args.busy, 3600 * 3)
            try:
                for round_no in range(args.rounds):
                    for index, result in one_round(client, indexes, round_no, args.rows, args.dim,
                                                   args.queries).items():
                        runs[index].append(result)
                        log(f"round {round_no} {index}: recall {result['recall']:.3f} {result['calibration']}")
            finally:
                for hog in hogs:
                    hog.kill()
            if not server.alive():
                raise RuntimeError(server.log_tail())
    summary = {
        index: {"runs": len(r), "failures": sum(x["recall"] < TARGET for x in r),
                "min_recall": min(x["recall"] for x in r), "mean_recall": float(np.mean([x["recall"] for x in r])),
                "rounds": r}
        for index, r in runs.items()
    }
    print(json.dumps({"benchmark": "recall_under_load", "store": args.store, "busy_loops": args.busy,
                      "rows": args.rows, "dim": args.dim, "queries": args.queries, "target": TARGET,
                      "machine": machine_info(), "indexes": summary}, indent=1))


if __name__ == "__main__":
    main()
