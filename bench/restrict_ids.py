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
from common import emit, installed_server, log, machine_info, percentiles, time_limit, wait_serving  # noqa: E402

from lookalike import Client, LookalikeClientError  # noqa: E402
from lookalike_server.embedded_milvus import standalone  # noqa: E402
from lookalike_server.expressions import ids_in  # noqa: E402
from lookalike_server.pipeline.search import RESTRICT_FILTER_MAX_IDS  # noqa: E402
from lookalike_server.store import GET_CHUNK  # noqa: E402
from lookalike_server.testing import ServerProcess  # noqa: E402

DIM = 1280  # the shipped model's (EfficientNet-Lite0) dimension: vectors go in as they are
COLLECTION = "restrict_bench"
TAG = "q1"
TAG_FILTER = f'metadata["tag"] == "{TAG}"'
PARTITION = "restrict_q1"
COPY_PREFIX = f"{TAG}/"
READ_CHUNK = GET_CHUNK  # ids per `id in [...]` query when the alternatives read rows, as Store.get does
WRITE_CHUNK = 1000  # rows per insert/upsert call (about 5 MB of floats)
SUBSPACE_DIM = 16
HIGH_EF = 512  # the server's uncalibrated HNSW default (recall.default_effort)
ALTERNATIVES = ("a_lookalike", "b_giant_filter", "c_tag_field", "d_temp_partition")


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


def row_id(i: int) -> str:
    return f"v{i}"


def exact_top_within(vectors: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int) -> list[list[str]]:
    """Each query's exact top k (cosine: unit rows, inner product) among the given row numbers, as ids."""
    scores = queries @ vectors[rows].T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    best = rows[np.take_along_axis(part, order, axis=1)]
    return [[row_id(int(r)) for r in line] for line in best]


# Time


class Deadline:
    """The whole run's time: cells are skipped (and say so) once less than `reserve_s` is left."""

    def __init__(self, seconds: float, reserve_s: float) -> None:
        self.end = time.monotonic() + seconds
        self.reserve_s = reserve_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def short(self) -> bool:
        return self.left() < self.reserve_s


# Payload sizes (estimates: protobuf framing left out)


def id_filter(ids: Sequence[str]) -> str:
    return ids_in(ids)


def filter_bytes_chunked(ids: Sequence[str], chunk: int) -> int:
    return sum(len(id_filter(ids[i : i + chunk]).encode()) for i in range(0, len(ids), chunk))


def row_bytes(ids: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None) -> int:
    """Ids + float32 vectors (+ metadata JSON) of rows."""
    meta = sum(len(json.dumps(m, separators=(",", ":"))) for m in metadata) if metadata else 0
    return sum(len(i) for i in ids) + len(ids) * DIM * 4 + meta


def hit_bytes(k: int) -> int:
    return k * (8 + 8)  # an id of a few bytes and a float distance per hit


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
    return max(512, 4 * k)


# Measuring


def measure_queries(search: Callable[[np.ndarray], list[str]], queries: np.ndarray, truth: list[list[str]],
                    budget_s: float, allowed: set[str] | None = None) -> dict[str, Any]:
    """One query per call, in order, until all are done or budget_s has passed (at least one). With `allowed`
    (the set), hits outside it are counted: a filter that leaks is wrong whatever its recall."""
    latencies: list[float] = []
    recalls: list[float] = []
    outside = short = 0
    started = time.monotonic()
    for qi, q in enumerate(queries):
        if qi and time.monotonic() - started > budget_s:
            break
        t = time.perf_counter()
        got = search(q)
        latencies.append(time.perf_counter() - t)
        want = truth[qi]
        recalls.append(len(set(got[: len(want)]) & set(want)) / len(want))
        short += len(got) < len(want)
        if allowed is not None:
            outside += sum(g not in allowed for g in got)
    lat = percentiles(latencies)
    out = {"queries": len(latencies), "p50_ms": lat["p50"], "max_ms": lat["max"],
           "first_ms": round(latencies[0] * 1e3, 2), "recall_at_10": round(float(np.mean(recalls)), 4),
           "short_results": short}
    if allowed is not None:
        out["hits_outside_set"] = outside
    return out


def cell(deadline: Deadline, label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One store x size x alternative: its figures, or why there are none (an error, or out of time)."""
    if deadline.short():
        log(f"  {label}: skipped, {deadline.left():.0f} s left")
        return {"skipped": f"out of time ({deadline.left():.0f} s of the run left)"}
    log(f"  {label}")
    started = time.monotonic()
    try:
        out = fn()
    except TimeoutError:
        raise
    except Exception as e:  # lookalike, pymilvus and gRPC raise their own types: record them, go on
        out = {"error": f"{type(e).__name__}: {str(e)[:800]}"}
        log(f"  {label}: {out['error'][:300]}")
    out["cell_seconds"] = round(time.monotonic() - started, 1)
    summary = {k: out[k] for k in ("setup_s", "p50_ms", "teardown_s", "recall_at_10") if k in out}
    log(f"  {label}: {summary}")
    return out


class Direct:
    """pymilvus MilvusClient on the store the server used, with the server's ef and consistency."""

    def __init__(self, client: Any, is_lite: bool, ef: int, k: int) -> None:
        self.client = client
        self.level: dict[str, str] = {} if is_lite else {"consistency_level": "Session"}
        self.ef = max(ef, k)
        self.k = k

    def search(self, q: np.ndarray, ef: int, filter_expr: str = "", partitions: Sequence[str] = ()) -> list[str]:
        kwargs: dict[str, Any] = {"partition_names": list(partitions)} if partitions else {}
        hits = self.client.search(COLLECTION, data=[q.tolist()], limit=self.k, filter=filter_expr,
                                  output_fields=["id"], search_params={"params": {"ef": ef}}, **kwargs, **self.level)
        return [h["id"] for h in hits[0]]

    def count(self, filter_expr: str, partition: str = "") -> int:
        kwargs: dict[str, Any] = {"partition_names": [partition]} if partition else {}
        rows = self.client.query(COLLECTION, filter=filter_expr, output_fields=["count(*)"], **kwargs, **self.level)
        return int(rows[0]["count(*)"])

    def measure(self, search: Callable[[np.ndarray, int], list[str]], queries: np.ndarray, truth: list[list[str]],
                budget_s: float, allowed: set[str]) -> dict[str, Any]:
        """At the server's ef, then (when higher) at HIGH_EF: filtered HNSW searches lose recall at a low ef."""
        out = {"ef": self.ef, **measure_queries(lambda q: search(q, self.ef), queries, truth, budget_s, allowed)}
        if self.ef < HIGH_EF:
            out[f"at_ef_{HIGH_EF}"] = measure_queries(lambda q: search(q, HIGH_EF), queries, truth, budget_s, allowed)
        return out

    def read(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The rows (id, float32 vector, metadata), in chunks of READ_CHUNK ids, ready to be written again."""
        rows: list[dict[str, Any]] = []
        for start in range(0, len(ids), READ_CHUNK):
            chunk = self.client.query(COLLECTION, filter=id_filter(ids[start : start + READ_CHUNK]),
                                      output_fields=["id", "vector", "metadata"], **self.level)
            rows.extend({"id": r["id"], "vector": np.asarray(r["vector"], dtype=np.float32),
                         "metadata": dict(r.get("metadata") or {})} for r in chunk)
        return rows

    def write(self, method: str, rows: list[dict[str, Any]], partition: str = "") -> None:
        call = getattr(self.client, method)
        kwargs = {"partition_name": partition} if partition else {}
        for start in range(0, len(rows), WRITE_CHUNK):
            call(COLLECTION, rows[start : start + WRITE_CHUNK], **kwargs)


class Read:
    """The set's rows, read once per size and shared by (c) and (d): both need them (Milvus 2.3 and Lite have no
    partial update, and a partition holds copies), and reading twice would double the slowest part on Lite."""

    def __init__(self, direct: Direct, ids: list[str]) -> None:
        started = time.perf_counter()
        self.rows = direct.read(ids)
        self.seconds = time.perf_counter() - started
        self.ids = [r["id"] for r in self.rows]
        self.metadata = [r["metadata"] for r in self.rows]
        self.bytes_to_milvus = filter_bytes_chunked(ids, READ_CHUNK)
        self.bytes_from_milvus = row_bytes(self.ids, self.metadata)


def giant_filter(direct: Direct, ids: list[str], queries: np.ndarray, truth: list[list[str]],
                 budget_s: float) -> dict[str, Any]:
    expr = id_filter(ids)
    out = direct.measure(lambda q, ef: direct.search(q, ef, expr), queries, truth, budget_s, set(ids))
    return {"setup_s": 0.0, **out, "teardown_s": 0.0, "expression_bytes": len(expr.encode()),
            "bytes_to_milvus_per_query": len(expr.encode()) + DIM * 4,
            "bytes_from_milvus_per_query": hit_bytes(direct.k)}


def tag_field(direct: Direct, read: Read, queries: np.ndarray, truth: list[list[str]],
              budget_s: float) -> dict[str, Any]:
    """Upsert the read rows tagged, search by the tag, upsert the original metadata back."""
    tagged = [{**r, "metadata": {**r["metadata"], "tag": TAG}} for r in read.rows]
    t1 = time.perf_counter()
    direct.write("upsert", tagged)
    t2 = time.perf_counter()
    try:
        out = direct.measure(lambda q, ef: direct.search(q, ef, TAG_FILTER), queries, truth, budget_s, set(read.ids))
        out["tagged_rows_visible_after_queries"] = direct.count(TAG_FILTER)
    finally:
        t3 = time.perf_counter()
        direct.write("upsert", read.rows)
        t4 = time.perf_counter()
    return {"setup_s": round(read.seconds + t2 - t1, 2), "setup_read_rows_s": round(read.seconds, 2),
            "setup_upsert_s": round(t2 - t1, 2), **out, "teardown_s": round(t4 - t3, 2),
            "rows_read": len(read.rows), "bytes_to_milvus_per_query": len(TAG_FILTER) + DIM * 4,
            "bytes_from_milvus_per_query": hit_bytes(direct.k),
            "setup_bytes_to_milvus": read.bytes_to_milvus + row_bytes(read.ids, [t["metadata"] for t in tagged]),
            "setup_bytes_from_milvus": read.bytes_from_milvus,
            "teardown_bytes_to_milvus": row_bytes(read.ids, read.metadata)}


def temp_partition(direct: Direct, read: Read, queries: np.ndarray, truth: list[list[str]],
                   budget_s: float, is_lite: bool) -> dict[str, Any]:
    """Insert copies of the read rows (ids prefixed) into a new partition, search it alone, drop it."""
    copies = [{**r, "id": COPY_PREFIX + r["id"]} for r in read.rows]
    t1 = time.perf_counter()
    direct.client.create_partition(COLLECTION, PARTITION)
    try:
        direct.write("insert", copies, PARTITION)
        t2 = time.perf_counter()
        if not is_lite:  # a partition made in a loaded collection is searchable at once; a load makes sure
            direct.client.load_partitions(COLLECTION, [PARTITION])
        t3 = time.perf_counter()
        out = direct.measure(
            lambda q, ef: [h.removeprefix(COPY_PREFIX) for h in direct.search(q, ef, partitions=[PARTITION])],
            queries, truth, budget_s, set(read.ids))
        out["partition_rows_visible_after_queries"] = direct.count("", PARTITION)
    finally:
        t4 = time.perf_counter()
        if not is_lite:  # Milvus Lite has no partition-level release (UNIMPLEMENTED); it drops a loaded one
            direct.client.release_partitions(COLLECTION, [PARTITION])
        direct.client.drop_partition(COLLECTION, PARTITION)
        t5 = time.perf_counter()
    return {"setup_s": round(read.seconds + t3 - t1, 2), "setup_read_rows_s": round(read.seconds, 2),
            "setup_create_partition_and_insert_s": round(t2 - t1, 2), **out, "teardown_s": round(t5 - t4, 2),
            "rows_copied": len(copies), "bytes_to_milvus_per_query": len(PARTITION) + DIM * 4,
            "bytes_from_milvus_per_query": hit_bytes(direct.k),
            "setup_bytes_to_milvus": read.bytes_to_milvus
            + row_bytes([c["id"] for c in copies], read.metadata),
            "setup_bytes_from_milvus": read.bytes_from_milvus}


def lookalike_path(address: str, ids: list[str], queries: np.ndarray, truth: list[list[str]],
                   budget_s: float, k: int, timeout_s: float) -> dict[str, Any]:
    with Client(address, timeout=timeout_s) as client:
        client.wait_until_ready(30)
        out = measure_queries(
            lambda q: [h.id for h in client.search(q, k=k, collection=COLLECTION, restrict_ids=ids)],
            queries, truth, budget_s, set(ids))
    to_server = sum(len(i) + 2 for i in ids) + DIM * 4
    if len(ids) <= RESTRICT_FILTER_MAX_IDS:
        path = f"`id in [...]` filter on the ANN search (<= {RESTRICT_FILTER_MAX_IDS} ids)"
        to_milvus, from_milvus = len(id_filter(ids).encode()) + DIM * 4, hit_bytes(k)
    else:
        path = f"exact: the set's vectors read with `id in [...]` queries of {GET_CHUNK} ids, ranked in the core"
        to_milvus, from_milvus = filter_bytes_chunked(ids, GET_CHUNK), row_bytes(ids)
    return {"path": path, "setup_s": 0.0, **out, "teardown_s": 0.0, "bytes_client_to_lookalike": to_server,
            "bytes_to_milvus_per_query": to_milvus, "bytes_from_milvus_per_query": from_milvus}


def same_id_partition_check(client: Any, is_lite: bool) -> dict[str, Any]:
    """Inserts 20 existing ids into a temporary partition of a 200-row collection, drops the partition, counts."""
    from pymilvus import DataType, MilvusClient

    name = "restrict_same_id_check"
    level: dict[str, str] = {} if is_lite else {"consistency_level": "Strong"}
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=8)
    schema.add_field("metadata", DataType.JSON)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE", params={"params": {}})
    if client.has_collection(name):
        client.drop_collection(name)
    client.create_collection(name, schema=schema, index_params=index, **level)
    try:
        v = np.random.default_rng(0).standard_normal((200, 8)).tolist()
        client.insert(name, [{"id": row_id(i), "vector": v[i], "metadata": {"n": i}} for i in range(200)])

        def count() -> int:
            return int(client.query(name, filter="", output_fields=["count(*)"], **level)[0]["count(*)"])

        before = count()
        client.create_partition(name, "tmp")
        client.insert(name, [{"id": row_id(i), "vector": v[i], "metadata": {"copy": True}} for i in range(20)],
                      partition_name="tmp")
        during = count()
        seen = client.query(name, filter='id == "v0"', output_fields=["metadata"], **level)
        if not is_lite:
            client.release_partitions(name, ["tmp"])
        client.drop_partition(name, "tmp")
        after = count()
        return {"rows_before": before, "rows_with_20_same_id_copies": during,
                "v0_metadata_while_copied": [r["metadata"] for r in seen], "rows_after_drop": after,
                "rows_lost": before - after}
    finally:
        client.drop_collection(name)


def direct_block(direct: Direct, is_lite: bool, sets: dict[int, list[str]], queries: np.ndarray,
                 truths: dict[int, list[list[str]]], args: argparse.Namespace, deadline: Deadline,
                 cells: dict[str, dict[str, Any]], store: str) -> None:
    """(b) over every size, then per size one read of the rows shared by (d) and then (c): c rewrites rows, so it
    goes last. Largest sets first: they are the question, and the run may be cut."""
    for size, ids in sets.items():
        cells[str(size)]["b_giant_filter"] = cell(
            deadline, f"[{store}] {size} ids b_giant_filter",
            lambda ids=ids, size=size: giant_filter(direct, ids, queries, truths[size], args.budget))
    for size, ids in sets.items():
        if deadline.short():
            for alt in ("d_temp_partition", "c_tag_field"):
                cells[str(size)][alt] = cell(deadline, f"[{store}] {size} ids {alt}", dict)
            continue
        log(f"  [{store}] {size} ids: reading the rows for c and d")
        try:
            read = Read(direct, ids)
        except Exception as e:  # recorded in both cells
            error = {"error": f"reading the rows failed: {type(e).__name__}: {str(e)[:800]}"}
            cells[str(size)]["d_temp_partition"] = cells[str(size)]["c_tag_field"] = error
            continue
        log(f"  [{store}] {size} ids: read {len(read.rows):,} rows in {read.seconds:.1f} s")
        cells[str(size)]["d_temp_partition"] = cell(
            deadline, f"[{store}] {size} ids d_temp_partition",
            lambda read=read, size=size: temp_partition(direct, read, queries, truths[size], args.budget, is_lite))
        cells[str(size)]["c_tag_field"] = cell(
            deadline, f"[{store}] {size} ids c_tag_field",
            lambda read=read, size=size: tag_field(direct, read, queries, truths[size], args.budget))
        del read


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


# Summary


def table(stores: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for store, block in stores.items():
        for size, alts in block.get("cells", {}).items():
            for alt, c in alts.items():
                rows.append({"store": store, "ids": int(size), "alternative": alt,
                             **{k: c.get(k) for k in ("setup_s", "p50_ms", "queries", "teardown_s", "recall_at_10",
                                                       "bytes_to_milvus_per_query", "bytes_from_milvus_per_query")},
                             **({f"p50_ms_ef_{HIGH_EF}": c[f"at_ef_{HIGH_EF}"]["p50_ms"],
                                 f"recall_at_10_ef_{HIGH_EF}": c[f"at_ef_{HIGH_EF}"]["recall_at_10"]}
                                if f"at_ef_{HIGH_EF}" in c else {}),
                             **({"ef": c["ef"]} if "ef" in c else {}),
                             **({"error": c["error"][:200]} if "error" in c else {}),
                             **({"skipped": c["skipped"]} if "skipped" in c else {})})
    return rows


def variants(c: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A cell's query figures: at the server's ef (or lookalike's own), and at HIGH_EF when measured."""
    out = [(f"ef {c['ef']}" if "ef" in c else "lookalike", c)]
    if f"at_ef_{HIGH_EF}" in c:
        out.append((f"ef {HIGH_EF}", c[f"at_ef_{HIGH_EF}"]))
    return out


def conclude(stores: dict[str, Any], recall_floor: float = 0.95) -> dict[str, Any]:
    """Per store, at the largest set: the alternative with the lowest one-off cost of one query (setup + p50 +
    teardown) among those with recall@10 >= recall_floor (at the server's ef, else at HIGH_EF), and the lowest
    per-query p50 once set up (a set searched many times, or tagged once at ingest)."""
    out: dict[str, Any] = {}
    for store, block in stores.items():
        if not block.get("cells"):
            continue
        largest = max(int(size) for size in block["cells"])
        alts = block["cells"][str(largest)]
        ok: dict[str, tuple[str, float, float]] = {}  # alternative -> (variant, p50 ms, setup + teardown s)
        for alt, c in alts.items():
            usable = [(name, v["p50_ms"]) for name, v in variants(c)
                      if v.get("p50_ms") is not None and v.get("recall_at_10", 0) >= recall_floor
                      and not v.get("hits_outside_set")]
            if usable:
                name, p50 = min(usable, key=lambda u: u[1])
                ok[alt] = (name, p50, c["setup_s"] + c["teardown_s"])
        if not ok:
            out[store] = {"ids": largest, "best_one_off": None, "why": "no alternative finished with enough recall"}
            continue
        one_off = {a: round(1e3 * fixed + p50, 1) for a, (_, p50, fixed) in ok.items()}
        per_query = {a: p50 for a, (_, p50, _) in ok.items()}
        best = min(one_off, key=one_off.get)
        fastest = min(per_query, key=per_query.get)
        if fastest != best and per_query[best] > per_query[fastest]:
            # Searches of the same set after which the cheaper query repays the set-up and tear-down.
            extra_s = ok[fastest][2] - ok[best][2]
            saved_s = (per_query[best] - per_query[fastest]) / 1e3
            break_even: dict[str, Any] = {"alternative": fastest, "searches": int(np.ceil(extra_s / saved_s))}
        else:
            break_even = {}
        rows = block.get("ingest", {}).get("rows")
        out[store] = {"ids": largest, "rows": rows, "set_is_the_whole_collection": largest == rows,
                      "index_finished_before_measuring": not block.get("ready", {}).get("index_timed_out", False),
                      "recall_floor": recall_floor, "best_one_off": best,
                      "one_off_ms_setup_plus_p50_plus_teardown": one_off,
                      "best_per_query_once_set_up": fastest, "p50_ms": per_query,
                      **({"repays_after_searches_of_the_same_set": break_even} if break_even else {}),
                      "searched_at": {a: name for a, (name, _, _) in ok.items()},
                      "lookalike_current_path_is_best_one_off": best == "a_lookalike",
                      "excluded_low_recall_or_failed": sorted(set(alts) - set(ok))}
    return out


def conclusion_text(verdict: dict[str, Any]) -> str:
    parts = []
    for store, v in verdict.items():
        if not v.get("best_one_off"):
            parts.append(f"{store}: nothing usable measured at {v['ids']:,} ids")
            continue
        one = v["one_off_ms_setup_plus_p50_plus_teardown"]
        ranked = ", ".join(f"{a} {one[a]:,.0f} ms" for a in sorted(one, key=one.get))
        which = "lookalike's current path" if v["lookalike_current_path_is_best_one_off"] else "NOT lookalike's path"
        caveats = (["the set is every row"] if v["set_is_the_whole_collection"] else []) + (
            [] if v["index_finished_before_measuring"] else ["Milvus had not finished the index"])
        where = f" of {v['rows']:,} rows" + (f" ({'; '.join(caveats)})" if caveats else "")
        text = (f"{store} at {v['ids']:,} ids{where}, one search (setup + p50 + teardown): {ranked}; best "
                f"{v['best_one_off']} ({which}); cheapest per query once set up: {v['best_per_query_once_set_up']}")
        if "repays_after_searches_of_the_same_set" in v:
            repay = v["repays_after_searches_of_the_same_set"]
            text += f", which repays its set-up after about {repay['searches']} searches of the same set"
        parts.append(text)
    return ". ".join(parts)


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
                stores[store]["stopped"] = str(e)
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


def summarize(result: dict[str, Any]) -> None:
    """The derived parts (table, verdict, conclusion, notes) from the measured `stores`."""
    stores = result["stores"]
    verdict = conclude(stores)
    result["table"] = table(stores)
    result["verdict_at_largest"] = verdict
    result["conclusion"] = conclusion_text(verdict)
    result["notes"] = [
        "setup/teardown seconds are per id set (c: read rows + upsert tagged / upsert back; d: read rows + insert "
        "copies / release + drop partition); p50_ms is per query, one query per call; recall@10 against numpy "
        "exact search within the set",
        "bytes are payload estimates: expressions, ids, metadata JSON and float32 vectors; protobuf framing left out",
        "a read by id on lookalike's path uses Strong consistency on a Milvus server (Store.get); the alternatives "
        "here read with Session",
        "the machine is shared: see machine.load_average_1m_at_start / load_average_1m_at_end",
        "stores.*.ready says whether Milvus had finished the index and lookalike its recall calibration before the "
        "cells ran (each wait is capped by --ready-timeout; the searches run whatever the state)",
        "partition_rows_visible_after_queries is a count(*) query with partition_names: Milvus Lite ignores "
        "partition_names there and counts the whole collection (its partition searches do keep to the partition: "
        "hits_outside_set 0)",
    ]


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
