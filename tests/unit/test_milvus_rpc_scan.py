"""milvus_rpc's reading of a scan page's reply bytes: the vectors cut out of the message without protobuf copying
them must come back exactly as protobuf itself reads them, whatever the order of the columns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymilvus.exceptions import MilvusException
from pymilvus.grpc_gen import common_pb2, milvus_pb2, schema_pb2

from lookalike_server.milvus_rpc import _scan_reply, _split_vectors


def _reply(n: int, dim: int, vectors_first: bool, with_metadata: bool = True) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    ids = schema_pb2.FieldData(field_name="id", type=schema_pb2.DataType.VarChar)
    ids.scalars.string_data.data.extend([f"id-{i}" for i in range(n)])
    vector = schema_pb2.FieldData(field_name="vector", type=schema_pb2.DataType.FloatVector)
    vector.vectors.dim = dim
    vector.vectors.float_vector.data.extend(vectors.ravel().tolist())
    metadata = schema_pb2.FieldData(field_name="metadata", type=schema_pb2.DataType.JSON)
    metadata.scalars.json_data.data.extend([json.dumps({"i": i}).encode() for i in range(n)])
    columns = [vector, ids] if vectors_first else [ids, vector]
    if with_metadata:
        columns.append(metadata)
    reply = milvus_pb2.QueryResults(status=common_pb2.Status(), fields_data=columns, session_ts=12345,
                                    output_fields=["id", "vector"])
    return reply.SerializeToString(), vectors


@pytest.mark.parametrize("vectors_first", [True, False])
@pytest.mark.parametrize(("n", "dim"), [(1, 1), (5, 3), (200, 1280)])
def test_the_vectors_are_cut_out_exactly(n, dim, vectors_first):
    raw, vectors = _reply(n, dim, vectors_first)
    rest, cut = _split_vectors(raw)
    assert cut is not None and cut.dtype == np.float32 and cut.flags.writeable
    assert np.array_equal(cut, vectors)
    assert len(rest) < len(raw) - 4 * n * dim
    rows, session_ts = _scan_reply(raw)
    assert session_ts == 12345
    assert rows.ids == [f"id-{i}" for i in range(n)]
    assert rows.metadata == [{"i": i} for i in range(n)]
    assert np.array_equal(rows.vectors, vectors)


def test_a_reply_without_vectors_is_read_by_protobuf():
    reply = milvus_pb2.QueryResults(fields_data=[schema_pb2.FieldData(field_name="id")])
    reply.fields_data[0].scalars.string_data.data.extend(["a", "b"])
    rows, _ = _scan_reply(reply.SerializeToString())
    assert rows.ids == ["a", "b"] and rows.vectors is None


def _record(number: int, payload: bytes) -> bytes:
    key, size, out = (number << 3) | 2, len(payload), bytearray()
    for value in (key, size):
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def test_floats_in_two_runs_are_read_by_protobuf():
    # Two serialised VectorFields back to back are one message to protobuf (its floats concatenated).
    first = schema_pb2.FieldData(field_name="vector")
    first.vectors.dim = 2
    first.vectors.float_vector.data.extend([1.0, 2.0])
    second = schema_pb2.FieldData()
    second.vectors.float_vector.data.extend([3.0, 4.0])
    raw = _record(2, first.SerializeToString() + second.SerializeToString())
    assert _split_vectors(raw) == (raw, None)
    rows, _ = _scan_reply(raw)
    assert np.array_equal(rows.vectors, np.array([[1, 2], [3, 4]], np.float32))


def test_a_failed_status_raises():
    reply = milvus_pb2.QueryResults(status=common_pb2.Status(code=1100, reason="bad expr"))
    with pytest.raises(MilvusException, match="bad expr"):
        _scan_reply(reply.SerializeToString())
