"""Searches and reads by id on a Milvus server go out from the event loop on Milvus' own gRPC stub
(milvus_rpc): they must return what the same calls through pymilvus return, on both kinds of server."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from lookalike_server.async_store import AsyncStore
from lookalike_server.config import ServerConfig
from lookalike_server.errors import FailedPrecondition, InvalidArgument, NotFound
from lookalike_server.store import CONSISTENCY_LEVELS, CollectionSpec, Store

DIM = 16


def _rows(n: int, seed: int) -> tuple[list[str], np.ndarray, list[dict]]:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [f"row-{i}" for i in range(n)], vectors, [{"n": i, "even": i % 2 == 0, "tag": f"t{i % 3}"} for i in range(n)]


@pytest.mark.parametrize("index_type", ["HNSW", "IVF_SQ8"])
def test_event_loop_search_and_reads_match_pymilvus(milvus_server_uri, index_type, tmp_path):
    store = Store(ServerConfig(data_dir=tmp_path, milvus_uri=milvus_server_uri))
    spec = CollectionSpec(name=f"parity_{index_type.lower()}", metric="ip", index_type=index_type, model="",
                          dimension=DIM)
    ids, vectors, metadata = _rows(300, seed=1)
    store.create(spec)
    try:
        store.upsert(spec.name, ids, vectors, metadata)
        queries = vectors[[3, 150, 299]]

        async def on_the_loop():
            surface = AsyncStore(store)
            surface.open()
            try:
                searched = await surface.search(spec, queries, 7, "metadata['even'] == true", with_metadata=True,
                                                effort=64, with_vectors=True)
                plain = await surface.search(spec, queries[:1], 5, with_vectors=False)
                read = await surface.get_vectors(spec.name, ["row-10", "row-11", "ghost"])
                return searched, plain, read
            finally:
                await surface.close(close_store=False)

        searched, plain, read = asyncio.run(on_the_loop())
        expected = store.search(spec.name, spec, queries, 7, "metadata['even'] == true", with_metadata=True,
                                effort=64, with_vectors=True)
        assert [len(hits) for hits in searched] == [7, 7, 7]
        for got, want in zip(searched, expected, strict=True):
            assert [c.id for c in got] == [c.id for c in want]
            assert [c.metadata for c in got] == [c.metadata for c in want]
            assert all(c.metadata["even"] for c in got)
            np.testing.assert_allclose([c.distance for c in got], [c.distance for c in want], rtol=1e-6)
            for candidate in got:
                np.testing.assert_allclose(candidate.vector, vectors[ids.index(candidate.id)], atol=1e-6)
        # Not asked for: neither vectors nor metadata come back, and the query finds itself first.
        assert plain[0][0].id == "row-3" and plain[0][0].vector is None and plain[0][0].metadata is None
        assert sorted(read) == ["row-10", "row-11"]
        np.testing.assert_array_equal(read["row-10"], store.get(spec.name, ["row-10"])["row-10"][0])
    finally:
        store.drop(spec.name)
        store.close()


def test_event_loop_reads_see_this_servers_writes_and_report_milvus_errors(milvus_server_uri, tmp_path):
    store = Store(ServerConfig(data_dir=tmp_path, milvus_uri=milvus_server_uri))
    spec = CollectionSpec(name="session_reads", metric="ip", index_type="HNSW", model="", dimension=DIM)
    ids, vectors, metadata = _rows(50, seed=2)
    store.create(spec)
    try:
        store.upsert(spec.name, ids, vectors, metadata)

        async def on_the_loop():
            surface = AsyncStore(store)
            surface.open()
            try:
                seen = {}
                _, new_vectors, _ = _rows(len(CONSISTENCY_LEVELS), seed=3)
                for level, vector in zip(CONSISTENCY_LEVELS, new_vectors, strict=True):
                    # A row written just now is read back at once (Session: this client's own writes).
                    fresh = f"fresh-{level}"
                    store.upsert(spec.name, [fresh], vector[None], [{}])
                    if level in ("Strong", "Session"):
                        stored = await surface.get_vectors(spec.name, [fresh], level)
                        hits = await surface.search(spec, vector[None], 1, consistency=level)
                        seen[level] = (fresh in stored, hits[0][0].id == fresh)
                    else:  # weaker levels are accepted; what they see is up to the server
                        await surface.search(spec, vectors[:1], 1, consistency=level)
                with pytest.raises(InvalidArgument, match="metadata"):
                    await surface.search(spec, vectors[:1], 3, "metadata['n'] >>> 1", with_vectors=False)
                with pytest.raises(InvalidArgument, match="consistency"):
                    await surface.search(spec, vectors[:1], 3, consistency="Sometimes")
                with pytest.raises(NotFound, match="missing"):
                    await surface.search(dataclasses.replace(spec, name="missing"), vectors[:1], 3)
                return seen
            finally:
                await surface.close(close_store=False)

        seen = asyncio.run(on_the_loop())
        assert seen == {"Strong": (True, True), "Session": (True, True)}
    finally:
        store.drop(spec.name)
        store.close()


def test_a_milvus_lite_server_is_told_apart_from_a_milvus_server(milvus_lite_server_uri, tmp_path):
    """A `milvus-lite server` accepts IVF_PQ and ScaNN collections and then fails to build their index in the
    background: lookalike recognises the engine behind the URI and refuses them up front."""
    store = Store(ServerConfig(data_dir=tmp_path, milvus_uri=milvus_lite_server_uri))
    try:
        for index_type in ("IVF_PQ", "SCANN"):
            spec = CollectionSpec(name=f"refused_{index_type.lower()}", metric="ip", index_type=index_type, model="",
                                  dimension=DIM)
            with pytest.raises(FailedPrecondition, match=f"{index_type} needs a Milvus server"):
                store.create(spec)
            assert spec.name not in store.list_collections()
    finally:
        store.close()
