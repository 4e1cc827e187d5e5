"""Milvus' Search and Query RPCs called straight on its gRPC stub, from the event loop (a Milvus server only).

They also read a scan's pages (every row, for exact search and the recall calibration): pymilvus' query
iterator made each page of 3,125 x 1280 floats into Python float lists, ~130 MB of objects a page that left
the server's RSS higher after every calibration; here a page's vectors are one float32 array.

These two calls are the interactive path: every Search, and every search by id first reads its query vectors.
pymilvus' asyncio client spends about 0.3 ms of Python per call on argument checks, an interceptor task per
header and result objects: measured against one `milvus-lite server`, a search took 0.74 ms of CPU through it
and 0.43 ms here, a read by id 0.59 ms and 0.36 ms. Requests carry what pymilvus' own carry (the same search
parameters, consistency level and guarantee timestamp, authorization and database headers), and a failed
status comes back as pymilvus' MilvusException, so Store translates errors exactly as for its other calls.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import numpy as np
from pymilvus.client import ts_utils
from pymilvus.client.types import Status
from pymilvus.client.utils import mkts_from_datetime
from pymilvus.exceptions import MilvusException
from pymilvus.grpc_gen import common_pb2, milvus_pb2, milvus_pb2_grpc

_LEVELS = {
    "Strong": common_pb2.ConsistencyLevel.Strong,
    "Session": common_pb2.ConsistencyLevel.Session,
    "Bounded": common_pb2.ConsistencyLevel.Bounded,
    "Eventually": common_pb2.ConsistencyLevel.Eventually,
}
# Guarantee timestamps as pymilvus sends them: 0 makes the server wait for its newest time tick (Strong),
# 1 takes whatever it has (Eventually), 2 lets it apply its staleness bound (Bounded).
_STRONG_TS, _EVENTUALLY_TS, _BOUNDED_TS = 0, 1, 2
_QUERY_METHOD = "/milvus.proto.milvus.MilvusService/Query"
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", True),
]


@dataclass
class Rows:
    """Rows as Milvus returned them, in order; `counts` splits a search's rows per query."""

    ids: list[str]
    vectors: np.ndarray | None
    metadata: list[Any] | None
    distances: list[float]
    counts: list[int]


def address_of(uri: str) -> tuple[str, bool]:
    """host:port and whether TLS is implied, from a Milvus URI as pymilvus reads it."""
    parsed = urlparse(uri if "://" in uri else f"http://{uri}")
    secure = parsed.scheme == "https"
    port = parsed.port or (443 if secure else 19530)
    return f"{parsed.hostname}:{port}", secure


class MilvusRpc:
    """One asyncio gRPC channel to a Milvus server, for `search`, `query` and a scan's pages only."""

    def __init__(
        self,
        uri: str,
        user: str = "",
        password: str = "",
        token: str = "",
        db_name: str = "",
        secure: bool = False,
        ca_pem_path: str = "",
        client_pem_path: str = "",
        client_key_path: str = "",
        server_name: str = "",
    ) -> None:
        self.address, implied_tls = address_of(uri)
        # pymilvus keys the last write timestamp of a collection (for Session reads) by the netloc it was
        # given and the database; upserts go through pymilvus, so Session reads here look under the same key.
        self._ts_endpoint = urlparse(uri).netloc or self.address
        self._db_name = db_name
        options = list(_CHANNEL_OPTIONS)
        if secure or implied_tls:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(ca_pem_path).read_bytes() if ca_pem_path else None,
                private_key=Path(client_key_path).read_bytes() if client_key_path else None,
                certificate_chain=Path(client_pem_path).read_bytes() if client_pem_path else None,
            )
            self._channel = grpc.aio.secure_channel(self.address, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(self.address, options=options)
        self._stub = milvus_pb2_grpc.MilvusServiceStub(self._channel)
        # Query with the reply left as bytes: a scan's page (16 MB) is read without protobuf copying its vectors.
        self._query_raw = self._channel.unary_unary(
            _QUERY_METHOD, request_serializer=milvus_pb2.QueryRequest.SerializeToString, response_deserializer=None)
        metadata = [("dbname", db_name)]
        secret = token or (f"{user}:{password}" if user else "")
        if secret:
            metadata.append(("authorization", base64.b64encode(secret.encode()).decode()))
        self._metadata = tuple(metadata)

    async def close(self) -> None:
        await self._channel.close()

    def _consistency(self, collection: str, level: str) -> dict[str, Any]:
        level = level or "Session"
        if level == "Session":
            timestamp = ts_utils.get_collection_ts(collection, self._ts_endpoint, self._db_name) or _EVENTUALLY_TS
        else:
            timestamp = {"Strong": _STRONG_TS, "Bounded": _BOUNDED_TS}.get(level, _EVENTUALLY_TS)
        return {"consistency_level": _LEVELS[level], "guarantee_timestamp": timestamp,
                "use_default_consistency": False}

    async def search(
        self,
        collection: str,
        vectors: np.ndarray,
        limit: int,
        params: dict[str, Any],
        filter_expr: str = "",
        output_fields: tuple[str, ...] = (),
        consistency: str = "",
        timeout: float | None = None,
    ) -> Rows:
        """The `limit` nearest rows to each of `vectors` (float32), in Milvus' order, with `output_fields`."""
        queries = np.ascontiguousarray(vectors, dtype="<f4")
        placeholders = common_pb2.PlaceholderGroup(placeholders=[common_pb2.PlaceholderValue(
            tag="$0", type=common_pb2.PlaceholderType.FloatVector, values=[row.tobytes() for row in queries],
        )])
        request = milvus_pb2.SearchRequest(
            collection_name=collection,
            placeholder_group=placeholders.SerializeToString(),
            dsl=filter_expr,
            dsl_type=common_pb2.DslType.BoolExprV1,
            output_fields=list(output_fields),
            nq=len(queries),
            search_params=[
                common_pb2.KeyValuePair(key="anns_field", value="vector"),
                common_pb2.KeyValuePair(key="topk", value=str(limit)),
                common_pb2.KeyValuePair(key="round_decimal", value="-1"),
                common_pb2.KeyValuePair(key="ignore_growing", value="False"),
                common_pb2.KeyValuePair(key="params", value=json.dumps(params.get("params", {}))),
            ],
            **self._consistency(collection, consistency),
        )
        reply = await self._stub.Search(request, timeout=timeout, metadata=self._metadata)
        _check(reply.status)
        results = reply.results
        rows = _fields(results.fields_data)
        return Rows(
            ids=list(results.ids.str_id.data),
            vectors=rows.get("vector"),
            metadata=rows.get("metadata"),
            distances=list(results.scores),
            counts=list(results.topks) or [0] * len(queries),
        )

    async def query(
        self,
        collection: str,
        filter_expr: str,
        output_fields: tuple[str, ...],
        consistency: str = "",
        timeout: float | None = None,
    ) -> Rows:
        """The rows matching `filter_expr`, with `output_fields` (which must include "id")."""
        request = milvus_pb2.QueryRequest(
            collection_name=collection,
            expr=filter_expr,
            output_fields=list(output_fields),
            **self._consistency(collection, consistency),
        )
        reply = await self._stub.Query(request, timeout=timeout, metadata=self._metadata)
        _check(reply.status)
        return _query_rows(reply)

    async def scan_page(
        self,
        collection: str,
        filter_expr: str,
        output_fields: tuple[str, ...],
        limit: int,
        timestamp: int,
        collection_id: int,
        timeout: float | None = None,
    ) -> tuple[Rows, int]:
        """One page of a scan in primary-key order, asked for as pymilvus' QueryIterator asks (`iterator`,
        `reduce_stop_for_best`, the collection id), and the timestamp it was read at (0 where the server does
        not say: Milvus 2.3). `timestamp` 0 reads Strong (the first page); any other pins the page to it, so
        every page sees the same writes (a server that names its read timestamp also reads as of it)."""
        params = {"collection_id": str(collection_id), "limit": str(limit), "iterator": "True",
                  "ignore_growing": "False", "reduce_stop_for_best": "True"}
        request = milvus_pb2.QueryRequest(
            collection_name=collection,
            expr=filter_expr,
            output_fields=list(output_fields),
            query_params=[common_pb2.KeyValuePair(key=k, value=v) for k, v in params.items()],
            consistency_level=common_pb2.ConsistencyLevel.Customized if timestamp
            else common_pb2.ConsistencyLevel.Strong,
            guarantee_timestamp=timestamp,
            use_default_consistency=False,
        )
        return _scan_reply(await self._query_raw(request, timeout=timeout, metadata=self._metadata))


def clock_timestamp() -> int:
    """This machine's clock as a Milvus hybrid timestamp: what pymilvus' iterator pins when Milvus names none."""
    return mkts_from_datetime(datetime.datetime.now())


def _scan_reply(raw: bytes) -> tuple[Rows, int]:
    """A scan page's rows out of the reply's bytes: its vectors copied once into a float32 array, the rest (ids,
    metadata, status) parsed by protobuf without them.

    Parsing the whole reply on a thread of the store's pool left 12-18 MiB more RSS after each scan of 5,000 x
    1280 (two pages) that malloc_trim did not give back (large blocks in each thread's own malloc arena); here
    the one large block is the array, made on the event loop's thread (a memory copy, ~3 ms a 16 MB page).
    """
    rest, vectors = _split_vectors(raw)
    reply = milvus_pb2.QueryResults.FromString(rest)
    if Status.EMPTY_COLLECTION in {reply.status.code, reply.status.error_code}:
        return Rows(ids=[], vectors=None, metadata=None, distances=[], counts=[0]), 0
    _check(reply.status)
    return _query_rows(reply, vectors), reply.session_ts


def _query_rows(reply: milvus_pb2.QueryResults, vectors: np.ndarray | None = None) -> Rows:
    """A Query reply's rows; `vectors`, where they were already read out of its bytes."""
    rows = _fields(reply.fields_data)
    ids = rows.get("id", [])
    return Rows(ids=ids, vectors=rows.get("vector") if vectors is None else vectors, metadata=rows.get("metadata"),
                distances=[], counts=[len(ids)])


def _split_vectors(raw: bytes) -> tuple[bytes, np.ndarray | None]:
    """The QueryResults bytes less its float vector column, and that column as rows of float32; the bytes as
    they are and None where the column is not one packed run of floats (protobuf then reads it)."""
    for number, wire, record, start, end in _records(raw, 0, len(raw)):
        if (number, wire) != (_RESULTS_FIELDS_DATA, 2):
            continue
        vector_fields = [(s, e) for n, w, _, s, e in _records(raw, start, end) if (n, w) == (_FIELD_VECTORS, 2)]
        if not vector_fields:
            continue
        dimension, floats = 0, []
        for n, w, _, s, e in _records(raw, *vector_fields[0]):
            if (n, w) == (_VECTOR_DIM, 0):
                dimension = _varint(raw, s)[0]
            elif (n, w) == (_VECTOR_FLOATS, 2):
                floats += [(fs, fe) for fn, fw, _, fs, fe in _records(raw, s, e) if fn == _FLOAT_DATA]
        if len(vector_fields) > 1 or dimension <= 0 or len(floats) != 1:
            return raw, None
        first, last = floats[0]
        if (last - first) % (4 * dimension):
            return raw, None
        vectors = np.frombuffer(raw, dtype="<f4", count=(last - first) // 4, offset=first).astype(np.float32)
        return raw[:record] + raw[end:], vectors.reshape(-1, dimension)
    return raw, None


# Field numbers in milvus.proto's QueryResults.fields_data, schema.proto's FieldData.vectors, VectorField.dim and
# .float_vector, FloatArray.data.
_RESULTS_FIELDS_DATA, _FIELD_VECTORS, _VECTOR_DIM, _VECTOR_FLOATS, _FLOAT_DATA = 2, 4, 1, 2, 1


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _records(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, record start, value start, value end) of each record of the protobuf message
    in buf[pos:end] (a varint's value starts and ends at its own bytes)."""
    while pos < end:
        record = pos
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            _, after = _varint(buf, pos)
        elif wire == 1:
            after = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            after = pos + length
        elif wire == 5:
            after = pos + 4
        else:
            raise MilvusException(message=f"unexpected protobuf wire type {wire} in a Query reply")
        yield key >> 3, wire, record, pos, after
        pos = after


def _check(status: common_pb2.Status) -> None:
    if status.code != 0 or status.error_code != 0:
        raise MilvusException(code=status.code or status.error_code, message=status.reason)


def _fields(fields_data: Any) -> dict[str, Any]:
    """lookalike's three columns out of Milvus' column-wise reply: ids, float vectors, JSON metadata."""
    columns: dict[str, Any] = {}
    for field in fields_data:
        if field.field_name == "id":
            columns["id"] = list(field.scalars.string_data.data)
        elif field.field_name == "vector":
            dimension = field.vectors.dim or 1
            columns["vector"] = np.asarray(field.vectors.float_vector.data, dtype=np.float32).reshape(-1, dimension)
        elif field.field_name == "metadata":
            columns["metadata"] = [json.loads(value) for value in field.scalars.json_data.data]
    return columns
