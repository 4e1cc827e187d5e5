"""The four ways restrict_ids.py measures of searching within an id set, one function a cell: (a) lookalike's
path through gRPC, and those that call pymilvus directly on the Milvus the server used: (b) one `id in [...]` filter
with every id, (c) the set tagged in the JSON field, (d) copies of the set in a temporary partition; the set's
rows read once for (c) and (d), the order of the (b)-(d) cells, and the check of what Milvus does with an existing
id inserted into another partition."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from common import log
from restrict_ids_common import (
    COLLECTION,
    DIM,
    HIGH_EF,
    Deadline,
    cell,
    filter_bytes_chunked,
    hit_bytes,
    id_filter,
    measure_queries,
    row_bytes,
    row_id,
)

from lookalike import Client
from lookalike_server.pipeline.search import RESTRICT_FILTER_MAX_IDS
from lookalike_server.store import GET_CHUNK

TAG = "q1"
TAG_FILTER = f'metadata["tag"] == "{TAG}"'
PARTITION = "restrict_q1"
COPY_PREFIX = f"{TAG}/"
READ_CHUNK = GET_CHUNK  # ids per `id in [...]` query when the alternatives read rows, as Store.get does
WRITE_CHUNK = 1000  # rows per insert/upsert call (about 5 MB of floats)


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
