"""Searching within a large id set (`restrict_ids`): lookalike's path against the alternatives Milvus offers.

One collection of ROWS x 1280 clustered unit vectors (HNSW, cosine, metadata {"n": i}) per store, made by lookalike
itself (CreateCollection, 4 Ingest streams); random id sets of each size; k=10; a few held-out queries, one per
call; recall@10 against numpy exact search within the set. Per store x set size x alternative:

  a_lookalike      `Client.search(q, restrict_ids=ids)` through gRPC: up to RESTRICT_FILTER_MAX_IDS (1,000) ids
                   become an `id in [...]` filter on the ANN search, larger sets are read from Milvus (Store.get,
                   `id in [...]` queries of 1,000 ids) and ranked exactly in the native core.
  b_giant_filter   one `id in [...]` expression with every id, straight to pymilvus MilvusClient.search.
  c_tag_field      tag the set in the JSON field (read the rows, upsert them with metadata["tag"] = "q1"), search
                   with `metadata["tag"] == "q1"`, untag (upsert the original metadata back). Milvus 2.3 has no
                   partial update, so a tag costs rewriting whole rows, vectors included.
  d_temp_partition read the rows, insert copies (ids prefixed "q1/") into a new partition, search that partition
                   only, drop it. Copies keep distinct ids: on Milvus Lite an insert of an existing id into another
                   partition REPLACES the row and dropping the partition then deletes it (`same_id_partition_check`
                   shows it on a 200-row collection per store).

(b)-(d) call pymilvus directly against the same Milvus the server used: for Milvus Lite the server is stopped
first and its own milvus.db opened in this process (one process at a time); for the standalone (PyPI `milvus`,
started here, lookalike pointed at it with --milvus-uri) the server is stopped too, so that it does not compete
for the cores. Order per store: a over every size, then b, then per size one read of the set's rows shared by d
and then c (c rewrites rows, so it goes last); largest sets first, since the run may be cut. Direct searches run
at the ef the server's calibration chose for k=10 (else its uncalibrated default) and again at ef 512 (filtered
HNSW searches lose recall at a low ef), with Session consistency on the standalone, as the server searches.
"bytes" are payload estimates (expressions, ids, metadata JSON and float32 vectors; protobuf framing left out):
what a call sends to Milvus and what Milvus sends back.

Run (about 25 minutes on 2 shared cores as below; Milvus Lite at 100,000 rows does not fit: its ingest, reads
by id and writes run at a few hundred rows a second there; the standalone part needs the `milvus` package that
`pip install "lookalike[server]"` (and `make test`) installs):
    .venv/bin/python bench/restrict_ids.py --write   # 100,000 rows on the standalone, 50,000 on Milvus Lite
    .venv/bin/python bench/restrict_ids.py --rows 5000 --lite-rows 0 --sizes 100,1000,2500   # a quick check
    .venv/bin/python bench/restrict_ids.py --summarize bench/results/restrict_ids.json   # redo the summary only
--write also saves bench/results/restrict_ids.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from common import emit, installed_server, log, machine_info, time_limit, wait_serving  # noqa: E402
from restrict_ids_alternatives import (  # noqa: E402
    WRITE_CHUNK,
    Direct,
    direct_block,
    lookalike_path,
    same_id_partition_check,
)
from restrict_ids_common import COLLECTION, DIM, HIGH_EF, Deadline, cell, row_id  # noqa: E402
from restrict_ids_summary import summarize  # noqa: E402

from lookalike import Client, LookalikeClientError  # noqa: E402
from lookalike_server.embedded_milvus import standalone  # noqa: E402
from lookalike_server.pipeline.search import RESTRICT_FILTER_MAX_IDS  # noqa: E402
from lookalike_server.store import GET_CHUNK  # noqa: E402
from lookalike_server.testing import ServerProcess  # noqa: E402

SUBSPACE_DIM = 16


# Data


def clustered(rows: int, queries: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows around random centres, each cluster spread along its own 16-d subspace (near-duplicates along a
    few directions, as embeddings of augmented photos are), uneven cluster sizes; queries drawn the same way."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((clusters, DIM, SUBSPACE_DIM), dtype=np.float32) / np.sqrt(DIM)
    weights = 1.0 / (np.arange(clusters) + 10.0)
    total = rows + queries
    labels = rng.choice(clusters, size=total, p=weights / weights.sum())
    out = np.empty((total, DIM), dtype=np.float32)
    for c in np.unique(labels):
        at = np.flatnonzero(labels == c)
        z = rng.standard_normal((len(at), SUBSPACE_DIM), dtype=np.float32) * (0.5 / np.sqrt(SUBSPACE_DIM))
        noise = rng.standard_normal((len(at), DIM), dtype=np.float32) * (0.15 / np.sqrt(DIM))
        out[at] = centres[c] + z @ bases[c].T + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out[:rows], out[rows:]


def exact_top_within(vectors: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int) -> list[list[str]]:
    """Each query's exact top k (cosine: unit rows, inner product) among the given row numbers, as ids."""
    scores = queries @ vectors[rows].T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    best = rows[np.take_along_axis(part, order, axis=1)]
    return [[row_id(int(r)) for r in line] for line in best]


# Servers


@contextlib.contextmanager
def lookalike_serve(workdir: Path, *args: str) -> Iterator[ServerProcess]:
    """`lookalike serve`, ready on return; stopped (SIGTERM) afterwards whatever happened."""
    server = ServerProcess(workdir, *args)
    try:
        wait_serving(server)
        yield server
    finally:
        server.stop()


def ingest(address: str, vectors: np.ndarray, streams: int = 4) -> dict[str, Any]:
    """Every row (ids v0, v1, ..., metadata {"n": i}) over `streams` Ingest streams; fails loudly on any error."""
    parts = np.array_split(np.arange(len(vectors)), streams)
    failures: Counter[str] = Counter()
    samples: list[str] = []
    lock = threading.Lock()

    def body(i: int) -> None:
        try:
            with Client(address, timeout=1800) as client:
                items = ((row_id(j), vectors[j], {"n": int(j)}) for j in parts[i])
                for result in client.ingest(items, collection=COLLECTION):
                    if not result.ok:
                        with lock:
                            failures[result.code] += 1
                            samples.append(result.message)
        except LookalikeClientError as e:
            with lock:
                failures[f"stream:{e.code}"] += 1
                samples.append(e.details)

    started = time.monotonic()
    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    if failures:
        raise RuntimeError(f"ingest failed: {dict(failures)} {samples[:3]}")
    return {"rows": len(vectors), "seconds": round(seconds, 1), "rows_per_s": round(len(vectors) / seconds, 1)}


def lite_index_built(db: Path) -> bool:
    """Milvus Lite's describe_index always says Finished: its index files beside each data segment are the truth."""
    partitions = db / "collections" / COLLECTION / "partitions"
    segments = {p.stem for p in partitions.glob("*/data/*.parquet")}
    indexed = {p.name.split(".")[0] for p in partitions.glob("*/indexes/*.idx")}
    return bool(segments) and segments <= indexed


def standalone_index_built(uri: str) -> dict[str, Any]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    try:
        client.flush(COLLECTION)
        info = client.describe_index(COLLECTION, "vector")
    finally:
        client.close()
    return {k: info.get(k) for k in ("index_type", "total_rows", "indexed_rows", "pending_index_rows", "state")}


def wait_ready_to_measure(server: ServerProcess, index_built: Callable[[], bool], probe: np.ndarray,
                          timeout_s: float) -> dict[str, Any]:
    """Waits for Milvus' index, then for the server's recall calibration (started by a search), so that neither
    runs in the background while the alternatives are timed. Gives up after timeout_s, and says so."""
    started = time.monotonic()
    out: dict[str, Any] = {}
    while not index_built():
        if time.monotonic() - started > timeout_s:
            out["index_timed_out"] = True
            break
        time.sleep(2.0)
    out["index_wait_s"] = round(time.monotonic() - started, 1)
    marker = f"calibrating {COLLECTION} failed"
    with Client(server.address, timeout=600) as client:
        client.search(probe, k=10, collection=COLLECTION)
        polls = 0
        while True:
            info = client.describe_collection(COLLECTION)
            if info.calibrations:
                out["calibrations"] = {str(k): {"effort": e, "recall": round(r, 4)}
                                       for k, (e, r) in info.calibrations.items()}
                break
            if marker in server.log():
                out["calibration_failed"] = [line[-300:] for line in server.log().splitlines()
                                             if "Error" in line or "details =" in line][-2:]
                break
            if time.monotonic() - started > timeout_s:
                out["calibration_timed_out"] = True
                break
            time.sleep(2.0)
            polls += 1
            if polls % 8 == 0:  # the server re-checks at most every 30 s, and only when searched
                client.search(probe, k=10, collection=COLLECTION)
    out["waited_s"] = round(time.monotonic() - started, 1)
    return out


def server_ef(ready: dict[str, Any], k: int) -> int:
    """The HNSW ef the server searches with for k: its calibration's, else recall.default_effort's."""
    calibrated = ready.get("calibrations", {})
    for ck in sorted(calibrated, key=int):
        if k <= int(ck):
            return int(calibrated[ck]["effort"])
    return max(HIGH_EF, 4 * k)


def store_block(store: str, args: argparse.Namespace, workdir: Path, vectors: np.ndarray, queries: np.ndarray,
                sets: dict[int, list[str]], truths: dict[int, list[list[str]]], deadline: Deadline,
                out: dict[str, Any]) -> None:
    """Fills `out` as it goes, so that a run stopped by --timeout keeps what this store measured."""
    from pymilvus import MilvusClient

    cells: dict[str, dict[str, Any]] = {str(size): {} for size in sets}
    out["cells"] = cells
    started = time.monotonic()
    milvus: standalone.MilvusStandalone | None = None
    try:
        if store == "lite":
            data_dir = workdir / "lite-data"
            serve_args = ["--milvus-embedded", "lite", "--data-dir", str(data_dir)]
            uri = str(data_dir / "milvus.db")
            out["milvus"] = ("Milvus Lite in lookalike's process (--milvus-embedded lite) for (a); the same milvus.db "
                             "opened in this process with pymilvus after the server stopped for (b)-(d)")
        else:
            milvus = standalone.MilvusStandalone(workdir / "standalone")
            uri = milvus.start()
            out["milvus"] = ("Milvus standalone 2.3.5 (PyPI `milvus`, started here); lookalike serve --milvus-uri "
                             f"for (a), pymilvus on the same server for (b)-(d); up in {milvus.start_seconds:.1f} s")
            serve_args = ["--milvus-uri", uri, "--data-dir", str(workdir / "unused")]
        with lookalike_serve(workdir / f"serve-{store}", *serve_args) as server:
            with Client(server.address, timeout=600) as client:
                client.create_collection(COLLECTION, "cosine", "HNSW")
            log(f"[{store}] ingesting {len(vectors):,} rows")
            out["ingest"] = ingest(server.address, vectors)
            log(f"[{store}] {out['ingest']}; waiting for the index and the calibration")
            if store == "lite":
                def built() -> bool:
                    return lite_index_built(Path(uri))
            else:
                def built() -> bool:
                    info = standalone_index_built(uri)
                    return info["pending_index_rows"] == 0 and info["indexed_rows"] == info["total_rows"]
            out["ready"] = wait_ready_to_measure(server, built, queries[0], args.ready_timeout)
            log(f"[{store}] ready: {out['ready']}")
            for size, ids in sets.items():
                cells[str(size)]["a_lookalike"] = cell(
                    deadline, f"[{store}] {size} ids a_lookalike",
                    lambda ids=ids, size=size: lookalike_path(server.address, ids, queries, truths[size],
                                                              args.budget, args.k, args.query_timeout))
            out["server_log_warnings"] = [line[-300:] for line in server.log().splitlines()
                                          if "WARNING" in line or "ERROR" in line][:10]
        ef = server_ef(out["ready"], args.k)
        out["direct_ef"] = ef
        t = time.monotonic()
        client = MilvusClient(uri)
        try:
            if store == "lite":
                client.load_collection(COLLECTION)
            out["direct_open_s"] = round(time.monotonic() - t, 1)
            log(f"[{store}] pymilvus on {uri} (opened in {out['direct_open_s']} s), ef {ef}")
            direct = Direct(client, store == "lite", ef, args.k)
            direct_block(direct, store == "lite", sets, queries, truths, args, deadline, cells, store)
            if not deadline.short():
                out["same_id_partition_check"] = same_id_partition_check(client, store == "lite")
                log(f"[{store}] same-id partition check: {out['same_id_partition_check']}")
        finally:
            client.close()
    finally:
        if milvus is not None:
            milvus.stop()
        out["seconds"] = round(time.monotonic() - started, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    deadline = Deadline(args.timeout - 60, args.reserve)
    result: dict[str, Any] = {
        "benchmark": "restrict_ids",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "server_package": installed_server(),
        "settings": {"dim": DIM, "index": "HNSW (M 16, efConstruction 200: lookalike's default)",
                     "metric": "cosine", "k": args.k, "sizes": args.sizes, "queries": args.queries,
                     "clusters": args.clusters, "per_cell_query_budget_s": args.budget, "timeout_s": args.timeout,
                     "restrict_filter_max_ids": RESTRICT_FILTER_MAX_IDS, "get_chunk": GET_CHUNK,
                     "write_chunk_rows": WRITE_CHUNK},
    }
    rows_for = {store: args.lite_rows if store == "lite" and args.lite_rows else args.rows for store in args.stores}
    result["settings"]["rows_per_store"] = rows_for
    most = max(rows_for.values())
    log(f"making {most:,} x {DIM} clustered vectors and {args.queries} queries")
    all_vectors, queries = clustered(most, args.queries, args.clusters, seed=11)
    stores: dict[str, Any] = {}
    result["stores"] = stores
    workdir = Path(tempfile.mkdtemp(prefix="lookalike-restrict-"))
    try:
        for store in args.stores:
            if store == "standalone" and not standalone.available():
                stores[store] = {"skipped": f"the Milvus standalone is not installed: {standalone.INSTALL}"}
                continue
            if deadline.short():
                stores[store] = {"skipped": "out of time"}
                continue
            log(f"[{store}] start ({deadline.left():.0f} s of the run left)")
            try:
                vectors = all_vectors[: rows_for[store]]
                rng = np.random.default_rng(12)  # the same sets for the same row count
                sizes = sorted({min(size, len(vectors)) for size in args.sizes}, reverse=True)
                rows_of = {size: np.sort(rng.choice(len(vectors), size=size, replace=False)) for size in sizes}
                sets = {size: [row_id(int(r)) for r in rng.permutation(rows)] for size, rows in rows_of.items()}
                truths = {size: exact_top_within(vectors, rows_of[size], queries, args.k) for size in sizes}
                stores[store] = {}
                store_block(store, args, workdir, vectors, queries, sets, truths, deadline, stores[store])
            except TimeoutError as e:
                stores.setdefault(store, {})["stopped"] = str(e)  # also when the sets were still being made
                break
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summarize(result)
    result["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["total_seconds"] = round(time.monotonic() - started, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the collection (the standalone's)")
    parser.add_argument("--lite-rows", type=int, default=50_000,
                        help="rows of the Milvus Lite collection (0: --rows); 100,000 do not fit 25 minutes here")
    parser.add_argument("--query-timeout", type=float, default=300.0, help="gRPC deadline of one lookalike search")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10_000, 50_000],
                        help="id set sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=5, help="queries per store x size x alternative")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--stores", type=lambda s: s.split(","), default=["standalone", "lite"],
                        help="lite (in-process Milvus Lite), standalone (Milvus standalone server)")
    parser.add_argument("--budget", type=float, default=40.0,
                        help="seconds of queries at most per cell (at least one query is measured)")
    parser.add_argument("--ready-timeout", type=float, default=240.0,
                        help="seconds at most waiting for the index and the server's calibration per store")
    parser.add_argument("--reserve", type=float, default=30.0, help="skip cells once less than this is left")
    parser.add_argument("--timeout", type=float, default=1560.0, help="the whole run stops after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (data, server logs)")
    parser.add_argument("--write", action="store_true", help="also save bench/results/restrict_ids.json")
    parser.add_argument("--summarize", type=Path, metavar="JSON",
                        help="measure nothing: recompute the table, verdict and conclusion of a saved result")
    args = parser.parse_args(argv)
    if args.summarize:
        result = json.loads(args.summarize.read_text())
        summarize(result)
    else:
        with time_limit(args.timeout):
            result = run(args)
    emit(result, "restrict_ids", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
