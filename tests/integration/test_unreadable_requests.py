"""Requests protobuf cannot parse (strings that are not UTF-8, corrupt bytes): a precise status, the server goes on."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from lookalike.v1 import lookalike_pb2 as pb

IMAGES = "/lookalike.v1.Images/"
COLLECTIONS = "/lookalike.v1.Collections/"


def raw_unary(channel: grpc.Channel, method: str, reply: type) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=reply.FromString)


def raw_stream(channel: grpc.Channel, method: str, reply: type) -> grpc.StreamStreamMultiCallable:
    return channel.stream_stream(method, request_serializer=lambda b: b, response_deserializer=reply.FromString)


def outcome(call: grpc.UnaryUnaryMultiCallable, data: bytes) -> tuple[grpc.StatusCode, str]:
    """The call's status code and details (OK and '' when it answered)."""
    try:
        call(data, timeout=30)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def replies_until_error(stream: grpc.StreamStreamMultiCallable, requests: list[bytes]) -> tuple[list, grpc.RpcError]:
    """The replies a stream gave before it ended with an error, and that error."""
    replies = []
    try:
        for reply in stream(iter(requests), timeout=60):
            replies.append(reply)
    except grpc.RpcError as e:
        return replies, e
    raise AssertionError(f"the stream ended without an error after {len(replies)} replies")


def unit_vector(dim: int) -> list[float]:
    v = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture
def stored(client, collection) -> tuple[str, int]:
    dim = client.describe_collection(collection).dimension
    assert all(r.ok for r in client.ingest([("kept", np.asarray(unit_vector(dim)))], collection=collection))
    return collection, dim


def search_with_xx(collection: str, dim: int) -> pb.SearchRequest:
    return pb.SearchRequest(collection=collection, k=1, filter='id == "XX"',
                            queries=[pb.Query(vector=pb.Vector(values=unit_vector(dim)))])


@pytest.mark.parametrize(("method", "reply", "request_with_xx"), [
    (IMAGES + "Get", pb.GetResponse, lambda c, _dim: pb.GetRequest(collection=c, ids=["XX"])),
    (IMAGES + "Search", pb.SearchResponse, search_with_xx),
    (IMAGES + "Delete", pb.DeleteResponse, lambda c, _dim: pb.DeleteRequest(collection=c, ids=["XX"])),
    (COLLECTIONS + "DescribeCollection", pb.CollectionInfo, lambda _c, _dim: pb.DescribeCollectionRequest(name="XX")),
], ids=["Get", "Search", "Delete", "DescribeCollection"])
def test_a_string_that_is_not_utf8_is_invalid_argument(server, client, stored, method, reply, request_with_xx):
    collection, dim = stored
    request = request_with_xx(collection, dim)
    data = request.SerializeToString()
    assert data.count(b"XX") == 1
    with grpc.insecure_channel(server.address) as channel:
        call = raw_unary(channel, method, reply)
        code, details = outcome(call, data.replace(b"XX", b"\xff\xfe"))
        # The same request, readable, is read and answered (a collection named "é" is simply not found).
        readable, _ = outcome(call, data.replace(b"XX", "é".encode()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # gRPC's own answer would be UNKNOWN
    assert "String field had bad UTF-8" in details and "must be UTF-8" in details
    assert readable in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)
    assert client.get(["kept"], collection=collection)  # refused before any work: nothing was deleted


def test_corrupt_bytes_are_invalid_argument(server, client):
    with grpc.insecure_channel(server.address) as channel:
        code, details = outcome(raw_unary(channel, COLLECTIONS + "ListCollections", pb.ListCollectionsResponse),
                                b"\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot be read" in details and "UTF-8" not in details  # the UTF-8 hint only where it applies
    client.wait_until_ready(5)


def test_an_unreadable_request_ends_a_search_stream_after_the_answers_before_it(server, stored):
    collection, dim = stored
    good = pb.SearchRequest(collection=collection, k=1, request_id="XX",
                            queries=[pb.Query(vector=pb.Vector(values=unit_vector(dim)))]).SerializeToString()
    with grpc.insecure_channel(server.address) as channel:
        stream = raw_stream(channel, IMAGES + "SearchStream", pb.SearchResponse)
        replies, error = replies_until_error(stream, [good, good.replace(b"XX", b"\xff\xfe")])
    assert [(r.request_id, [h.id for h in r.results[0].hits]) for r in replies] == [("XX", ["kept"])]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request 2 of the stream cannot be read" in error.details()


def test_an_unreadable_request_ends_an_embed_stream_after_the_results_before_it(server, photos_dir):
    good = pb.ImageItem(id="XX", image=(photos_dir / "rocket.jpg").read_bytes()).SerializeToString()
    with grpc.insecure_channel(server.address) as channel:
        stream = raw_stream(channel, IMAGES + "EmbedStream", pb.EmbedResult)
        replies, error = replies_until_error(stream, [good, good.replace(b"XX", b"\xff\xfe")])
    assert [r.id for r in replies] == ["XX"] and len(replies[0].vector.values) > 0
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request 2 of the stream cannot be read" in error.details()
