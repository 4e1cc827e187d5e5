"""The one way into Milvus from the event loop, for every part of the server (searches, reads, ingest, the recall
calibration): it owns the store's threads, the choice between them and the event-loop client per Milvus kind,
splitting calls to fit Milvus' replies, the id-set filter, and when a collection needs a flush.

Store (store.py) stays the blocking pymilvus layer underneath; nothing above calls it but through here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from .errors import Unavailable
from .expressions import ids_in
from .milvus_rpc import MilvusRpc, clock_timestamp
from .served_index import IndexState
from .store import Store, scan_filter, scan_page_rows
from .store_layout import Candidate, CollectionSpec, hits_per_query, output_fields, search_params

log = logging.getLogger(__name__)
T = TypeVar("T")

# Hits (queries x candidates) per Milvus call at most.
MAX_RESULTS_PER_MILVUS_CALL = 32_768
# Candidate vectors per Milvus call at most (40 MB): a Milvus server sends no reply over 64 MB (measured: a
# calibration asking 102 queries x 320 candidates of 1280 floats was refused at 105 MB).
VECTOR_REPLY_FLOATS = 10_000_000
# Milvus Lite runs in this process: Store lets its reads in together and a write alone. Two threads, so that a
# search is not held behind a recall calibration's long read (2-4 s a call at 20,000 x 1280; searches queued
# behind it had a p99 of 2.1 s). A server takes calls side by side.
LITE_THREADS = 2
SERVER_THREADS = 8
INDEX_POLL_SECONDS = 0.5
# Rows per scan page at most (fewer where a reply would pass REPLY_FLOATS: 3,125 of 1280 floats).
SCAN_BATCH = 10_000


def queries_per_call(limit: int, dimension: int, with_vectors: bool) -> int:
    """Queries per Milvus search call, so that a reply stays within what Milvus sends."""
    hits = min(MAX_RESULTS_PER_MILVUS_CALL, VECTOR_REPLY_FLOATS // dimension) if with_vectors \
        else MAX_RESULTS_PER_MILVUS_CALL
    return max(1, hits // limit)


def with_id_set(restrict_ids: Sequence[str], filter_expr: str) -> str:
    """The filter that keeps a search to `restrict_ids` (all rows when empty) and `filter_expr`."""
    ids = ids_in(restrict_ids) if restrict_ids else ""
    return f"({ids}) and ({filter_expr})" if ids and filter_expr else ids or filter_expr


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.is_lite = store.is_lite
        self.uri = store.uri
        self.pool = ThreadPoolExecutor(LITE_THREADS if store.is_lite else SERVER_THREADS,
                                       thread_name_prefix="milvus")
        # A Milvus server is also called straight from the event loop for searches and reads by id (see open).
        self.aio: MilvusRpc | None = None
        # Why Milvus is unavailable, while the server's health watchdog finds it so ("" when it answers).
        self.down = ""
        # Rows written (upserted or deleted) through here, and how many of them each collection's last flush
        # covered: a flush seals only what needs it (each ingest used to be flushed twice, at its end and by the
        # calibration after), and Ingest flushes a long stream's rows on the way.
        self._writes: collections.Counter[str] = collections.Counter()
        self._flushed_through: dict[str, int] = {}

    def open(self) -> None:
        """Opens the event-loop client, on the running loop (a server only).

        The interactive path then makes no hop to a thread and back: at 32 concurrent Search clients on Milvus
        standalone that hop, and the GIL handed between the threads, cost about 15% of the QPS.
        """
        if not self.is_lite and self.aio is None:
            self.aio = MilvusRpc(self.store.uri, **{k: v for k, v in self.store.connect_args.items() if v})

    async def close(self, close_store: bool = True) -> None:
        if self.aio is not None:
            await self.aio.close()
            self.aio = None
        self.pool.shutdown(wait=True, cancel_futures=True)
        if close_store:
            self.store.close()

    def check(self) -> None:
        # While Milvus is known to be down, calls fail at once instead of waiting on a half-started server.
        if self.down:
            raise Unavailable(self.down)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.check()
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    async def ping(self) -> None:
        """Raises a LookalikeError unless Milvus answers; the health watchdog's probe, never gated."""
        await asyncio.get_running_loop().run_in_executor(self.pool, self.store.ping)

    # Collections

    async def list_collections(self) -> list[str]:
        return await self._run(self.store.list_collections)

    async def create(self, spec: CollectionSpec) -> None:
        await self._run(self.store.create, spec)

    async def describe(self, name: str) -> CollectionSpec:
        return await self._run(self.store.describe, name)

    async def ensure_loaded(self, name: str) -> None:
        await self._run(self.store.ensure_loaded, name)

    async def describe_index(self, name: str) -> dict[str, Any]:
        return await self._run(self.store.describe_index, name)

    async def row_count(self, name: str) -> int:
        return await self._run(self.store.row_count, name)

    async def engine_is_lite(self) -> bool:
        return await self._run(self.store.engine_is_lite)

    async def drop(self, name: str) -> None:
        await self._run(self.store.drop, name)
        self._writes.pop(name, None)
        self._flushed_through.pop(name, None)

    # Writes and flushes

    async def upsert(self, name: str, ids: list[str], vectors: np.ndarray, metadata: list[dict[str, Any]]) -> None:
        self._writes[name] += len(ids)
        await self._run(self.store.upsert, name, ids, vectors, metadata)

    async def delete(self, name: str, ids: list[str]) -> int:
        self._writes[name] += len(ids)
        return await self._run(self.store.delete, name, ids)

    async def flush(self, name: str) -> None:
        """Seals the collection's recent rows so Milvus indexes them."""
        covers = self._writes[name]
        await self._run(self.store.flush, name)
        self._flushed_through[name] = max(covers, self._flushed_through.get(name, 0))

    def needs_flush(self, name: str) -> bool:
        """Whether rows written through here since the last flush (or before this process flushed it at all:
        rows another process left) may still wait unsealed. Other replicas flush what they write at the end of
        each Ingest stream, as this one does."""
        return name not in self._flushed_through or self._writes[name] > self._flushed_through[name]

    def unflushed_rows(self, name: str) -> int:
        """Rows written through here since the collection's last flush through here began."""
        return self._writes[name] - self._flushed_through.get(name, 0)

    async def index_state(self, name: str) -> IndexState | None:
        return await self._run(self.store.index_state, name)

    async def wait_for_index(self, name: str, timeout: float = 120.0) -> IndexState | None:
        """Flushes if needed, then waits until every flushed row is searched through its index; returns that state
        (see served_index), or None if that did not happen in time.

        Recall measured before then is misleading: Milvus answers rows it has not indexed, or whose index its
        query node has not loaded yet, by brute force.
        """
        if self.needs_flush(name):
            await self.flush(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = await self.index_state(name)
            if state is not None:
                return state
            await asyncio.sleep(INDEX_POLL_SECONDS)
        log.warning("collection %s: the index was not serving every row within %.0f s", name, timeout)
        return None

    # Reads

    async def search(
        self, spec: CollectionSpec, vectors: np.ndarray, limit: int, filter_expr: str = "", with_metadata: bool = False,
        effort: int = 0, consistency: str = "", with_vectors: bool = True,
    ) -> list[list[Candidate]]:
        """Approximate nearest neighbours of each query with Milvus' distances (and stored vectors if asked), in as
        many calls as Milvus' reply limits need."""
        self.check()
        step = queries_per_call(limit, spec.dimension, with_vectors)
        found: list[list[Candidate]] = []
        for start in range(0, len(vectors), step):
            chunk = vectors[start : start + step]
            if self.aio is not None:
                rows = await self.store.call_async(
                    self.aio.search, chunk, limit, search_params(spec.index_type, limit, effort), filter_expr,
                    tuple(output_fields(with_vectors, with_metadata)), self.store.level_name(consistency),
                    collection=spec.name, filter_expr=filter_expr)
                found += hits_per_query(rows)
            else:
                found += await self._run(self.store.search, spec.name, spec, chunk, limit, filter_expr, with_metadata,
                                         effort, consistency, with_vectors)
        return found

    async def get(
        self, name: str, ids: list[str], with_vectors: bool = True, with_metadata: bool = True, filter_expr: str = "",
    ) -> dict[str, tuple[np.ndarray | None, dict[str, Any] | None]]:
        """The stored rows among `ids` (and matching the filter), keyed by id; others are simply absent."""
        return await self._run(self.store.get, name, ids, with_vectors, with_metadata, filter_expr)

    async def get_vectors(self, name: str, ids: list[str], consistency: str = "") -> dict[str, np.ndarray]:
        """The stored vectors among `ids`, read as a search reads (they are its query vectors): on a server from
        the event loop at the search's consistency level, since Strong would make every search by id wait for
        Milvus' next time tick (about 200 ms, measured)."""
        if self.aio is None:
            rows = await self.get(name, ids, True, False)
            return {i: v for i, (v, _) in rows.items() if v is not None}
        self.check()
        found: dict[str, np.ndarray] = {}
        level = self.store.level_name(consistency)
        for request in self.store.get_requests(ids, True, False, "", {}):
            rows = await self.store.call_async(self.aio.query, request["filter"], tuple(request["output_fields"]),
                                               level, collection=name)
            if rows.vectors is not None:
                found.update(zip(rows.ids, rows.vectors, strict=True))
        return found

    async def page(self, name: str, offset: int, limit: int) -> tuple[list[str], np.ndarray]:
        return await self._run(self.store.page, name, offset, limit)

    async def scan(
        self, name: str, filter_expr: str = "", with_metadata: bool = False, batch_size: int = SCAN_BATCH
    ) -> AsyncIterator[tuple[list[str], np.ndarray, list[Any]]]:
        """Every row (matching the filter) in batches of (ids, vectors, metadata): other calls go between them.

        A Milvus server (a `milvus-lite server` too) is read through milvus_rpc from the event loop: pages in
        primary-key order, all as of the first page's time, their vectors float32 arrays (bench/scan_memory.py's workers
        against a `milvus-lite server` at 10,000 x 1280: 2.6-3.4 s a scan and a peak 87-130 MiB over the baseline,
        against 3.9-6.2 s and 370-404 MiB through pymilvus' query iterator, which also broke on an id with a
        double quote). Milvus Lite in this process is read through Store.scan, each batch on the store's threads.
        """
        if self.aio is None:
            pages = self.store.scan(name, filter_expr, with_metadata, batch_size)
            try:
                while (batch := await self._run(next, pages, None)) is not None:
                    yield batch
            finally:
                await asyncio.get_running_loop().run_in_executor(self.pool, pages.close)
            return
        collection_id, dimension = await self._run(self.store.scan_target, name)
        limit = scan_page_rows(dimension, batch_size)
        fields = ("id", "vector", "metadata") if with_metadata else ("id", "vector")
        # Milvus 2.3 names no read timestamp: later pages are pinned to this clock reading, taken before the
        # first page (read Strong), as pymilvus' iterator does; they then see every write made before the scan.
        timestamp, clock = 0, clock_timestamp()
        after: str | None = None
        while True:
            self.check()
            rows, read_at = await self.store.call_async(
                self.aio.scan_page, scan_filter(filter_expr, after), fields, limit, timestamp, collection_id,
                collection=name, filter_expr=filter_expr)
            if not rows.ids:
                return
            timestamp = timestamp or read_at or clock
            after = rows.ids[-1]
            vectors = rows.vectors if rows.vectors is not None else np.zeros((len(rows.ids), dimension), np.float32)
            yield rows.ids, vectors, rows.metadata or [None] * len(rows.ids)
            del rows, vectors  # not held while the next page is read: one page at a time in memory
