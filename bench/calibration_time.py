"""One full recall calibration at 100,000 x 1280, timed with three versions of the server code against the same
Milvus standalone collection: the exact reference over every row plus the effort search, as the server runs it.

Versions (issue 24's before and after): 4f06ba0 (the calibration in recall.py, sync, called with a Store on the
pipeline's low-priority calibration thread, its search a closure in pipeline.py), 2d2578e (pipeline/calibration.py,
sync, same thread) and the working tree (async through async_store.AsyncStore on an event loop, its arithmetic on
the calibration's low-priority thread). Each runs in its own subprocess with its own source on PYTHONPATH
(old ones: `git worktree add` + /work/tools/overlay), alternating for --rounds rounds; the collection is made once,
by this process, with the working tree's Store.

    PYTHONPATH=/tmp/ov-h24b .venv/bin/python bench/calibration_time.py [--rows 100000] [--index IVF_FLAT] [--write]
    # a version alone, against a running Milvus (what each subprocess runs):
    PYTHONPATH=/tmp/ov-cal4f06ba0 .venv/bin/python bench/calibration_time.py --worker --uri http://127.0.0.1:19530 \
        --collection calibration_time
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
OLD_VERSIONS = ("4f06ba0", "2d2578e")
TARGET = 0.99


# ---- one version, in its own process (the lookalike_server on PYTHONPATH) ----------------------------------


def worker(uri: str, name: str) -> dict[str, Any]:
    """Times one calibrate() of `name` with whichever lookalike_server this process imports."""
    from lookalike_server.config import ServerConfig
    from lookalike_server.store import Store
    from lookalike_server.thread_priority import BULK_NICE, thread_pool

    with tempfile.TemporaryDirectory(prefix="calibration-time-") as tmp:
        store = Store(ServerConfig(data_dir=Path(tmp), milvus_uri=uri))
        try:
            spec = store.describe(name)
            # The calibration's own thread, as each version's server ran it (nice BULK_NICE).
            pool = thread_pool(1, "calibrate", BULK_NICE)
            try:
                if _has("lookalike_server.async_store"):
                    kind, run = "async AsyncStore (pipeline/calibration.py)", _async_run(store, spec, pool)
                elif _has("lookalike_server.pipeline.calibration"):
                    kind, run = "sync Store (pipeline/calibration.py)", _sync_pipeline_run(store, spec, pool)
                else:
                    kind, run = "sync Store (recall.py, search closure of pipeline.py)", _recall_run(store, spec, pool)
                discarded: list[float] = []
                for _ in range(3):  # None: rows or Milvus' segments changed while it measured (it says so)
                    started = time.monotonic()
                    calibration = run()
                    seconds = time.monotonic() - started
                    if calibration is not None:
                        break
                    discarded.append(round(seconds, 2))
            finally:
                pool.shutdown(wait=True)
        finally:
            store.close()
    if calibration is None:
        raise RuntimeError(f"calibrate() returned None for {name} (index not ready, or rows changed)")
    return {"code": kind, "seconds": round(seconds, 2), "rows": calibration.rows,
            "exact_reference": calibration.exact_reference, "efforts": calibration.efforts,
            "recalls": {k: round(v, 4) for k, v in calibration.recalls.items()},
            "overfetch": calibration.overfetch, "exact_fallback": calibration.exact_fallback,
            "discarded_attempts_s": discarded}


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # 4f06ba0: pipeline is a module, not a package
        return False


def _recall_run(store: Any, spec: Any, pool: Any) -> Any:
    """4f06ba0: recall.calibrate(store, ...) with the search closure Pipeline._calibrate built (copied here: it was
    a closure inside a method, so it cannot be imported; it calls that version's own module functions)."""
    from lookalike_server import pipeline as old
    from lookalike_server.recall import calibrate

    def search(queries: np.ndarray, k: int, effort: int, overfetch: int = old.OVERFETCH) -> list[list[str]]:
        quantized = spec.index_type in old.QUANTIZED_INDEXES
        fetch = old._fetch(spec, k, overfetch)
        step = old._queries_per_call(fetch, spec.dimension, quantized)
        ranked: list[Any] = []
        for start in range(0, len(queries), step):
            chunk = queries[start : start + step]
            found = store.search(spec.name, spec, chunk, fetch, "", False, effort, "Strong", with_vectors=quantized)
            ranked += old.rerank(chunk, found, k, spec.metric) if quantized \
                else old.rank_by_distance(found, k, spec.metric)
        return [[h.id for h in hits] for hits in ranked]

    return lambda: pool.submit(calibrate, store, spec, TARGET, search).result()


def _sync_pipeline_run(store: Any, spec: Any, pool: Any) -> Any:
    """2d2578e: pipeline.calibration.calibrate(store, ...) with search_for_calibration, as Calibrator._calibrate."""
    from lookalike_server.pipeline.calibration import OVERFETCH, calibrate, search_for_calibration

    def search(queries: np.ndarray, k: int, effort: int, overfetch: int = OVERFETCH) -> list[list[str]]:
        return search_for_calibration(store, spec, queries, k, effort, overfetch)

    return lambda: pool.submit(calibrate, store, spec, TARGET, search).result()


def _async_run(store: Any, spec: Any, pool: Any) -> Any:
    """The working tree: await calibrate(AsyncStore, ...) on an event loop, as Calibrator._calibrate."""
    from lookalike_server.async_store import AsyncStore
    from lookalike_server.pipeline.calibration import OVERFETCH, calibrate, search_for_calibration

    async def run() -> Any:
        surface = AsyncStore(store)
        surface.open()
        try:
            async def search(queries: np.ndarray, k: int, effort: int, overfetch: int = OVERFETCH) -> list[list[str]]:
                return await search_for_calibration(surface, spec, queries, k, effort, overfetch, pool)

            return await calibrate(surface, spec, TARGET, search, pool)
        finally:
            await surface.close(close_store=False)

    return lambda: asyncio.run(run())


# ---- the driver: one collection, the versions in turn ---------------------------------------------------------


def make_collection(uri: str, name: str, rows: int, dim: int, index_type: str, data: str) -> dict[str, Any]:
    """The collection, through the working tree's Store (lookalike's row layout), flushed and fully indexed."""
    from pymilvus import MilvusClient

    from lookalike_server.config import ServerConfig
    from lookalike_server.store import CollectionSpec, Store

    sys.path.insert(0, str(REPO / "bench"))
    from search_data import Clusters, random_unit

    started = time.monotonic()
    if data == "clustered":
        vectors = Clusters.make(random_unit(200, dim, 3), "random unit vectors", seed=4).sample(rows, 1)
    else:
        vectors = random_unit(rows, dim, 1)
    made_s = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix="calibration-time-") as tmp:
        store = Store(ServerConfig(data_dir=Path(tmp), milvus_uri=uri))
        try:
            if name in store.list_collections():
                store.drop(name)
            spec = CollectionSpec(name=name, metric="cosine", index_type=index_type, model="", dimension=dim)
            store.create(spec)
            started = time.monotonic()
            step = 2_000  # 10 MB a call
            for start in range(0, rows, step):
                ids = [f"v{i}" for i in range(start, min(rows, start + step))]
                store.upsert(name, ids, vectors[start : start + step], [{} for _ in ids])
            inserted_s = time.monotonic() - started
            store.flush(name)
        finally:
            store.close()
    client = MilvusClient(uri)
    try:
        started, settled = time.monotonic(), 0
        while True:  # every row indexed, nothing pending, three looks in a row (compactions done)
            info = client.describe_index(name, "vector")
            done = 0 < int(info.get("total_rows", 0)) <= int(info.get("indexed_rows", 0))
            settled = settled + 1 if done and not int(info.get("pending_index_rows", 0)) else 0
            if settled >= 3:
                break
            if time.monotonic() - started > 900:
                raise TimeoutError(f"index of {name} not built in 900 s: {info}")
            time.sleep(2.0)
        index_s = time.monotonic() - started
    finally:
        client.close()
    state = {k: v for k, v in info.items()
             if k in ("index_type", "params", "total_rows", "indexed_rows", "pending_index_rows", "state")}
    return {"name": name, "rows": rows, "dimension": dim, "metric": "cosine", "index": state,
            "data": (f"{data}: 200 random unit centres, bench/search_data.Clusters (16-d subspace spread), normalised"
                     if data == "clustered" else "random unit vectors"),
            "seconds": {"data_made": round(made_s, 1), "upserted_through_store": round(inserted_s, 1),
                        "index_wait_after_flush": round(index_s, 1)}}


def overlay(sha: str) -> str:
    """A worktree of `sha` at /tmp/cal-<sha> and its PYTHONPATH overlay (/work/tools/overlay)."""
    tree = Path(f"/tmp/cal-{sha}")
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), sha], check=True,
                       capture_output=True)
    done = subprocess.run(["/work/tools/overlay", f"cal{sha}"], env={**os.environ, "SRC": str(tree)}, check=True,
                          capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


def run_version(label: str, pythonpath: str, uri: str, name: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, __file__, "--worker", "--uri", uri, "--collection", name], env=env,
                          capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"{label} failed ({done.returncode}): {done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["load_average_1m_at_start"] = round(load, 2)
    out["calibration_log"] = [line for line in done.stderr.splitlines() if "calibrat" in line][-6:]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help="time one calibration with the code on PYTHONPATH")
    parser.add_argument("--uri", default="", help="a running Milvus server (default: start a standalone)")
    parser.add_argument("--collection", default="calibration_time")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--index", default="IVF_FLAT", choices=("IVF_FLAT", "HNSW"))
    parser.add_argument("--data", default="clustered", choices=("clustered", "random"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", action="store_true",
                        help="one untimed calibration (HEAD) first, so that no version pays for Milvus' first reads")
    parser.add_argument("--versions", default=",".join((*OLD_VERSIONS, "HEAD")),
                        help="commits to time, HEAD being this process's own PYTHONPATH (the working tree)")
    parser.add_argument("--write", action="store_true", help="also save bench/results/calibration_time.json")
    args = parser.parse_args(argv)
    if args.worker:
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # the calibration's own lines, read back below
        print(json.dumps(worker(args.uri, args.collection)))
        return 0

    import datetime as dt

    from lookalike_server.embedded_milvus import standalone

    versions = args.versions.split(",")
    paths = {v: os.environ.get("PYTHONPATH", "") if v == "HEAD" else overlay(v) for v in versions}
    result: dict[str, Any] = {
        "benchmark": "calibration_time",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
        "head": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True).stdout.strip(),
        "what": ("one full calibrate() (min_recall 0.99, k 10 and 100): exact reference over every row (every row "
                 "read out of Milvus, exact top-k in the native core) + the effort search through lookalike's "
                 "search path; each version in its own subprocess against the same collection"),
        "versions": {"4f06ba0": "issue 24 filed: recall.calibrate(Store), sync, on the calibration thread",
                     "2d2578e": "pipeline/calibration.py, sync Store, on the calibration thread",
                     "HEAD": "pipeline/calibration.py through async_store.AsyncStore on an event loop"},
        "adapter": ("4f06ba0's search was a closure inside Pipeline._calibrate: this script repeats its body, calling "
                    "that version's own pipeline._fetch, _queries_per_call, rank_by_distance and rerank"),
    }
    milvus = None
    tmp = tempfile.TemporaryDirectory(prefix="calibration-time-milvus-")
    try:
        uri = args.uri
        if not uri:
            milvus = standalone.MilvusStandalone(Path(tmp.name) / "standalone")
            started = time.monotonic()
            uri = milvus.start()
            result["milvus"] = {"kind": "Milvus standalone (PyPI milvus), started by this script",
                                "start_s": round(time.monotonic() - started, 1)}
        else:
            result["milvus"] = {"kind": "a running Milvus server", "uri": uri}
        print(f"[calibration_time] Milvus at {uri}; making {args.rows} x {args.dim} {args.index}", file=sys.stderr)
        result["collection"] = make_collection(uri, args.collection, args.rows, args.dim, args.index, args.data)
        print(f"[calibration_time] {result['collection']}", file=sys.stderr)
        if args.warmup and "HEAD" in versions:
            result["warmup"] = run_version("HEAD", paths["HEAD"], uri, args.collection)
            print(f"[calibration_time] warm-up {json.dumps(result['warmup'])}", file=sys.stderr)
        runs: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = versions if r % 2 == 0 else versions[::-1]
            for v in order:
                try:
                    out = {"round": r + 1, "version": v, **run_version(v, paths[v], uri, args.collection)}
                except Exception as e:  # the other versions are still worth timing
                    out = {"round": r + 1, "version": v, "error": f"{type(e).__name__}: {e}"[:3000]}
                print(f"[calibration_time] {json.dumps(out)}", file=sys.stderr)
                runs.append(out)
        result["runs"] = runs
        ok = [x for x in runs if "seconds" in x]
        seconds = {v: [x["seconds"] for x in ok if x["version"] == v] for v in versions}
        mean = {v: round(float(np.mean(s)), 2) for v, s in seconds.items() if s}
        result["summary"] = {
            "seconds": seconds, "mean_seconds": mean,
            "ratio_head_over": {v: round(mean["HEAD"] / mean[v], 3) for v in mean if v != "HEAD"}
            if "HEAD" in mean else {},
            "efforts": {v: [x["efforts"] for x in ok if x["version"] == v] for v in versions},
            "recalls": {v: [x["recalls"] for x in ok if x["version"] == v] for v in versions},
            "failed_runs": [x for x in runs if "error" in x],
        }
    finally:
        if milvus is not None:
            milvus.stop()
        tmp.cleanup()
    text = json.dumps(result, indent=2)
    print(text)
    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "calibration_time.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
