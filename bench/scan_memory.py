"""What a full scan of a Milvus server costs the server process (issue 25): peak and settled RSS, seconds a scan.

A scan reads every row out of Milvus (the recall calibration's exact reference, exact search). Two paths, each in
its own subprocess (a fresh heap each) against the same Milvus standalone collection, alternating for --rounds:

- old: pymilvus' query_iterator (Store.scan), each page a list of dicts holding Python float lists;
- new: AsyncStore.scan through milvus_rpc, the same pages' vectors cut out of the reply into float32 arrays.

Each runs under glibc's default malloc settings (as the server does) and again with MALLOC_MMAP_THRESHOLD_ fixed at
1 MiB (see MALLOC).

    PYTHONPATH=/tmp/ov-scan .venv/bin/python bench/scan_memory.py [--rows 30000] [--scans 3] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import mib  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
SETTLE_S = 1.0


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class Peak:
    """The highest RSS seen by a thread polling every 5 ms, between reset() and read()."""

    def __init__(self) -> None:
        self.value = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.value = max(self.value, rss())

    def reset(self) -> None:
        self.value = rss()

    def read(self) -> int:
        return max(self.value, rss())


def worker(uri: str, collection: str, path: str, scans: int) -> dict[str, Any]:
    from lookalike_server.async_store import AsyncStore
    from lookalike_server.config import ServerConfig
    from lookalike_server.memory_trim import MemoryTrimmer
    from lookalike_server.store import Store

    trimmer = MemoryTrimmer()

    async def run() -> dict[str, Any]:
        store = AsyncStore(Store(ServerConfig(milvus_uri=uri)))
        store.open()
        await store.row_count(collection)
        gc.collect()
        baseline = rss()
        peak = Peak()
        runs = []
        for _ in range(scans):
            peak.reset()
            started = time.perf_counter()
            rows = pages = 0
            checksum = 0.0
            async for ids, vectors, _ in (store.scan(collection) if path == "new" else old_scan(store, collection)):
                assert vectors.dtype == np.float32
                rows, pages, checksum = rows + len(ids), pages + 1, checksum + float(vectors[:, 0].sum())
                del vectors
            seconds = time.perf_counter() - started
            top = peak.read()
            gc.collect()
            await asyncio.sleep(SETTLE_S)
            settled = rss()
            trimmer.trim_now()  # what the server's MemoryTrimmer does every 10 s
            runs.append({"seconds": round(seconds, 2), "rows": rows, "pages": pages, "peak_mib": mib(top),
                         "settled_mib": mib(settled), "trimmed_mib": mib(rss()), "checksum": round(checksum, 1)})
        await store.close()
        return {"path": path, "baseline_mib": mib(baseline), "scans": runs}

    return asyncio.run(run())


async def old_scan(store: Any, collection: str) -> Any:
    """AsyncStore.scan before issue 25: Store.scan (pymilvus' query_iterator on a server) a page at a time on the
    store's threads."""
    pages = store.store.scan(collection)
    try:
        while (batch := await store._run(next, pages, None)) is not None:
            yield batch
    finally:
        await asyncio.get_running_loop().run_in_executor(store.pool, pages.close)


def make_collection(uri: str, name: str, rows: int, dim: int) -> dict[str, Any]:
    from lookalike_server.config import ServerConfig
    from lookalike_server.store import Store
    from lookalike_server.store_layout import CollectionSpec

    store = Store(ServerConfig(milvus_uri=uri))
    if name in store.list_collections():
        store.drop(name)
    store.create(CollectionSpec(name, "cosine", "FLAT", "", dim))
    rng = np.random.default_rng(0)
    started = time.monotonic()
    for start in range(0, rows, 1000):
        n = min(1000, rows - start)
        store.upsert(name, [f"row-{i:07d}" for i in range(start, start + n)], rng.random((n, dim), np.float32),
                     [{"n": i} for i in range(start, start + n)])
    store.flush(name)
    count = store.row_count(name)
    store.close()
    return {"name": name, "rows": count, "dim": dim, "index": "FLAT", "insert_s": round(time.monotonic() - started, 1)}


# glibc settings each path runs under: as the server runs today, and with large blocks always mmap'd (glibc's
# threshold otherwise rises to the largest block freed, 16 MB pages then stay in its arenas; malloc_trim gives
# back only part of them).
MALLOC = {"default": {}, "mmap_threshold_1MiB": {"MALLOC_MMAP_THRESHOLD_": str(2**20)}}


def run_worker(uri: str, collection: str, path: str, scans: int, malloc: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--worker", path, "--uri", uri, "--collection", collection,
                          "--scans", str(scans)], capture_output=True, text=True, check=False,
                         env={**os.environ, **MALLOC[malloc]})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(all_runs: list[dict[str, Any]], malloc: str) -> dict[str, Any]:
    runs = [r for r in all_runs if r["malloc"] == malloc]
    by_path: dict[str, Any] = {}
    for path in ("old", "new"):
        scans = [(r["baseline_mib"], s) for r in runs if r["path"] == path for s in r["scans"]]
        if not scans:
            continue
        by_path[path] = {
            "seconds_per_scan_mean": round(float(np.mean([s["seconds"] for _, s in scans])), 2),
            "peak_over_baseline_mib_max": round(max(s["peak_mib"] - b for b, s in scans), 1),
            "settled_over_baseline_mib_last": round(float(np.mean(
                [r["scans"][-1]["settled_mib"] - r["baseline_mib"] for r in runs if r["path"] == path])), 1),
            "trimmed_over_baseline_mib_last": round(float(np.mean(
                [r["scans"][-1]["trimmed_mib"] - r["baseline_mib"] for r in runs if r["path"] == path])), 1),
        }
    if len(by_path) == 2:
        by_path["old_over_new_seconds"] = round(by_path["old"]["seconds_per_scan_mean"]
                                                / by_path["new"]["seconds_per_scan_mean"], 2)
    return by_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=("old", "new"), help="scan with one path (what each subprocess runs)")
    parser.add_argument("--uri", default="", help="a running Milvus server (default: start a standalone)")
    parser.add_argument("--collection", default="scan_memory")
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--scans", type=int, default=3, help="full scans per subprocess")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="also save bench/results/scan_memory.json")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.uri, args.collection, args.worker, args.scans)))
        return 0

    from lookalike_server.embedded_milvus import standalone

    result: dict[str, Any] = {
        "benchmark": "scan_memory",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
        "head": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True).stdout.strip(),
        "what": ("full scans (AsyncStore.scan, every row with its vector) of one collection, each path in its own "
                 "subprocess: RSS before (baseline), the highest RSS during a scan (polled every 5 ms), RSS 1 s "
                 "after it (settled) and then after malloc_trim(0) as the server's MemoryTrimmer calls it every 10 s "
                 "(trimmed), seconds a scan"),
    }
    milvus = None
    tmp = tempfile.TemporaryDirectory(prefix="scan-memory-milvus-")
    try:
        uri = args.uri
        if not uri:
            milvus = standalone.MilvusStandalone(Path(tmp.name) / "standalone")
            uri = milvus.start()
            result["milvus"] = "Milvus standalone 2.3.5 (PyPI milvus), started by this script"
        else:
            result["milvus"] = f"a running Milvus server at {uri}"
        print(f"[scan_memory] Milvus at {uri}; making {args.rows} x {args.dim}", file=sys.stderr)
        result["collection"] = make_collection(uri, args.collection, args.rows, args.dim)
        runs = []
        for malloc in MALLOC:
            for r in range(args.rounds):
                for path in ("new", "old") if r % 2 == 0 else ("old", "new"):
                    out = {"malloc": malloc, "round": r + 1,
                           **run_worker(uri, args.collection, path, args.scans, malloc)}
                    print(f"[scan_memory] {json.dumps(out)}", file=sys.stderr)
                    runs.append(out)
        result["runs"] = runs
        result["summary"] = {malloc: summary(runs, malloc) for malloc in MALLOC}
    finally:
        if milvus is not None:
            milvus.stop()
        tmp.cleanup()
    print(json.dumps(result, indent=2))
    if args.write:
        (REPO / "bench" / "results" / "scan_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
