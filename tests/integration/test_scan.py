"""AsyncStore.scan, which reads every row for exact search and the recall calibration: on a Milvus server (the
standalone, and a `milvus-lite server`) through milvus_rpc, pages by primary key with float32 arrays straight
from the reply. Every row comes back once, with its own vector and metadata, across many pages."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lookalike_server.async_store import AsyncStore
from lookalike_server.config import ServerConfig
from lookalike_server.errors import InvalidArgument
from lookalike_server.store import CollectionSpec, Store

ROWS = 300
DIM = 16


def _rows() -> tuple[list[str], np.ndarray, list[dict]]:
    rng = np.random.default_rng(7)
    # Ids that need escaping in the page expression (`id > "..."`), and ones that sort before and after them.
    ids = [f'q"{i}\\x' if i % 9 == 0 else f"row {i:04d}" for i in range(ROWS)]
    metadata = [{"n": i, "odd": i % 2, "tag": f"t{i % 5}"} for i in range(ROWS)]
    return ids, rng.standard_normal((ROWS, DIM)).astype(np.float32), metadata


async def _scan(store: AsyncStore, name: str, **kwargs) -> list[tuple[list[str], np.ndarray, list]]:
    return [page async for page in store.scan(name, **kwargs)]


@pytest.fixture
def filled(milvus_server_uri, request):
    name = "scan_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:50]
    store = Store(ServerConfig(milvus_uri=milvus_server_uri))
    if name in store.list_collections():
        store.drop(name)
    store.create(CollectionSpec(name, "l2", "FLAT", "", DIM))
    ids, vectors, metadata = _rows()
    # Three flushes: the rows lie in several sealed segments, whose pages Milvus merges by primary key.
    for start, end in ((0, 120), (120, 210), (210, ROWS)):
        store.upsert(name, ids[start:end], vectors[start:end], metadata[start:end])
        store.flush(name)
    try:
        yield store, name
    finally:
        store.drop(name)
        store.close()


def test_a_scan_returns_every_matching_row_once_across_small_pages(filled):
    store, name = filled
    ids, vectors, metadata = _rows()
    wanted = {i: n for n, i in enumerate(ids) if n % 2 == 1 and n % 5 != 0}

    async def run():
        astore = AsyncStore(store)
        astore.open()
        try:
            pages = await _scan(astore, name, filter_expr='metadata["odd"] == 1 and metadata["tag"] != "t0"',
                                with_metadata=True, batch_size=11)
            everything = await _scan(astore, name, batch_size=64)
            return pages, everything, await astore.engine_is_lite()
        finally:
            await astore.close(close_store=False)

    pages, everything, lite = asyncio.run(run())
    assert len(pages) >= len(wanted) // 11
    seen = [i for page_ids, _, _ in pages for i in page_ids]
    assert sorted(seen) == sorted(wanted)  # each once
    for page_ids, page_vectors, page_metadata in pages:
        assert page_vectors.dtype == np.float32 and page_vectors.shape == (len(page_ids), DIM)
        assert page_vectors.flags.writeable
        for i, vector, meta in zip(page_ids, page_vectors, page_metadata, strict=True):
            assert np.array_equal(vector, vectors[wanted[i]]), i
            assert meta == metadata[wanted[i]]
    if not lite:
        assert seen == sorted(seen)  # the standalone's pages come in primary-key order, which the cursor relies on
    all_ids = [i for page_ids, _, _ in everything for i in page_ids]
    assert sorted(all_ids) == sorted(ids)
    assert all(m is None for _, _, page_metadata in everything for m in page_metadata)
    by_id = {i: v for page_ids, page_vectors, _ in everything for i, v in zip(page_ids, page_vectors, strict=True)}
    assert all(np.array_equal(by_id[i], vectors[n]) for n, i in enumerate(ids))


def test_a_scan_with_a_bad_filter_says_so(filled):
    store, name = filled

    async def run():
        astore = AsyncStore(store)
        astore.open()
        try:
            with pytest.raises(InvalidArgument, match="not a valid Milvus expression"):
                await _scan(astore, name, filter_expr="metadata[ ==")
            # Nothing matches: no page at all.
            assert await _scan(astore, name, filter_expr='metadata["n"] > 100000') == []
        finally:
            await astore.close(close_store=False)

    asyncio.run(run())
