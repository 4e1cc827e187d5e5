"""Ingest streams: each item checked and embedded, rows upserted through one batcher shared by all streams,
one result per item once Milvus holds it, and one flush per burst of streams ending. While searches near
their latency target (search_slo), streams are read more slowly, upserts wait, and flushes are deferred."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .. import metrics
from ..async_store import AsyncStore
from ..batcher import BULK, MicroBatcher
from ..config import ServerConfig
from ..errors import InvalidArgument, LookalikeError
from ..own_writes import OwnWrites
from ..search_slo import SearchSlo
from .calibration import Calibrator
from .catalog import Catalog
from .embedding import Embedding
from .types import IngestItem, ItemResult, check_id
from .vectors import check_vector

log = logging.getLogger(__name__)

T = TypeVar("T")
# Rows written to Milvus in one upsert at most.
MAX_UPSERT_ROWS = 256
# Every Ingest stream's rows go to Milvus through one shared batcher: an upsert call costs about the same
# whatever its size (Milvus Lite, 1280-d rows: 1.27 ms of CPU a row one at a time, 0.26 at 32), and with
# 8 streams each upserting what it alone had ready, calls held one or two rows. A Milvus server takes a
# few calls at once; a second starts beside a running one only once UPSERT_OVERLAP_AT rows wait.
UPSERT_CALLS_IN_FLIGHT = 2
UPSERT_OVERLAP_AT = 32
# An Ingest stream's end is when its collection is flushed (sealed, so Milvus indexes it) and its recall
# calibration checked; streams ending within this many seconds of each other share one flush and one check.
# Eight streams each flushing at their end had Milvus Lite seal eight small segments, each indexed and
# searched on its own, and spend 0.6 ms of CPU per ingested image on flushes.
SETTLE_DELAY_SECONDS = 0.5
# ... and while other streams still write to the collection, its flush waits for them (a flush seals a
# segment that Milvus then indexes beside the live ingest, which stalled interactive calls by up to 180 ms),
# but no longer than this after the first stream's end.
SETTLE_MAX_WAIT_SECONDS = 10.0
# A flush waits for searches to be quiet (it seals a segment that Milvus then indexes), but no longer than this:
# the rows must be indexed some time.
FLUSH_MAX_DEFER_SECONDS = 30.0
# A collection that Ingest streams keep writing to is also flushed every this many rows, not only when they end:
# Milvus scans every unflushed row exactly for each search, 5.2x the CPU per query at 10,000 rows
# (bench/results/unindexed_rows.json), and over a long ingest beside searches that tail grew until no throttle
# of ingest could hold the search latency target. Servers only: Milvus Lite's flush stops its searches.
FLUSH_EVERY_ROWS = 5000
# How often a throttled stream's reader looks again whether it may read on.
THROTTLED_READ_POLL_SECONDS = 0.02


@dataclass
class Row:
    collection: str
    id: str
    vector: np.ndarray
    metadata: dict[str, Any]


class Ingest:
    def __init__(self, config: ServerConfig, catalog: Catalog, embedding: Embedding, store: AsyncStore,
                 calibrator: Calibrator, slo: SearchSlo | None, own_writes: OwnWrites) -> None:
        self.config = config
        self.own_writes = own_writes  # shared with Search: who wrote where
        self.slo = slo if slo is not None else SearchSlo(0.0)
        self.catalog = catalog
        self.embedding = embedding
        self.store = store
        self.calibrator = calibrator
        # Ingest images between the network and their embedding, across all streams: memory stays flat.
        self._slots = asyncio.Semaphore(4 * embedding.max_batch * embedding.embedder.concurrent_runs)
        lite = store.is_lite
        self._batcher: MicroBatcher[Row, ItemResult] = MicroBatcher(
            self._store_rows,
            None,  # a coroutine: the store's async surface picks its threads
            max_batch_size=MAX_UPSERT_ROWS,
            max_queue_delay=0.0,
            concurrency=1 if lite else UPSERT_CALLS_IN_FLIGHT,
            overlap_at=UPSERT_OVERLAP_AT,
            name="upsert-batcher",
            pacer=self.slo,  # upserts wait while searches need Milvus and the cores; their batches grow meanwhile
        )
        # Collections with a flush pending after an ingest (see _settle_soon), and those flushes under way.
        self._settle_timers: dict[str, asyncio.TimerHandle] = {}
        self._settle_asked: dict[str, float] = {}  # when a collection's pending flush was first asked for
        self._writing: collections.Counter[str] = collections.Counter()  # Ingest streams writing, by collection
        self._background: set[asyncio.Future[None]] = set()
        self._sealing: set[str] = set()  # collections whose flush on the way runs now

    def writing(self, name: str) -> bool:
        """Whether an Ingest stream of this server writes to the collection now."""
        return self._writing[name] > 0

    def start(self) -> None:
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.close()
        for timer in self._settle_timers.values():
            timer.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _prepare_row(self, item: IngestItem, caller: str) -> Row | ItemResult:
        try:
            if item.error is not None:
                raise item.error
            check_id(item.id)
            self._check_metadata(item.metadata)
            spec = await self.catalog.spec(item.collection)
            if caller:
                self.own_writes.wrote(caller, spec.name)
            if item.vector is not None:
                vector = check_vector(item.vector, spec)
            elif item.image is not None:
                async with self._slots:
                    vector = await self.embedding.image_vector(item.image, spec, BULK)
            else:
                raise InvalidArgument("item has neither image bytes nor a vector")
            return Row(spec.name, item.id, vector, item.metadata)
        except LookalikeError as e:
            return ItemResult(item.id, e.code, f"item {item.id!r}: {e.message}")

    def _check_metadata(self, metadata: dict[str, Any]) -> None:
        size = len(json.dumps(metadata, separators=(",", ":")).encode("utf-8"))
        if size > self.config.max_metadata_bytes:
            raise InvalidArgument(
                f"metadata of {size} bytes as JSON is over the limit of {self.config.max_metadata_bytes} bytes"
            )

    def _settle_soon(self, name: str) -> None:
        """After an Ingest stream ends: one flush of the collection, then its calibration check, shared with
        the other streams that end within SETTLE_DELAY_SECONDS or still write to it (up to a limit)."""
        if name in self._settle_timers:
            return
        loop = asyncio.get_running_loop()
        self._settle_asked.setdefault(name, loop.time())

        def start() -> None:
            if self._writing[name] and loop.time() - self._settle_asked[name] < SETTLE_MAX_WAIT_SECONDS:
                self._settle_timers[name] = loop.call_later(SETTLE_DELAY_SECONDS, start)
                return
            self._in_background(self._settle(name))

        self._settle_timers[name] = loop.call_later(SETTLE_DELAY_SECONDS, start)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` beside the streams; close() waits for it."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _flush(self, name: str) -> None:
        try:
            await self.store.flush(name)
        except Exception as e:  # Milvus down or the collection dropped: the next stream's end tries again
            log.warning("flushing collection %s failed: %s", name, e)

    async def _settle(self, name: str) -> None:
        # Rows stored from here on need a flush of their own: a stream ending now schedules the next one.
        self._settle_timers.pop(name, None)
        self._settle_asked.pop(name, None)
        await self.slo.wait_for_quiet(FLUSH_MAX_DEFER_SECONDS)
        await self._flush(name)
        spec = self.catalog.cached(name)
        if spec is not None:
            self.calibrator.calibrate_soon(spec)

    def _flush_if_long(self, name: str) -> None:
        """Starts a flush of a server's collection once FLUSH_EVERY_ROWS rows wait unflushed (one at a time)."""
        if self.store.is_lite or name in self._sealing or self.store.unflushed_rows(name) < FLUSH_EVERY_ROWS:
            return
        self._sealing.add(name)
        self._in_background(self._flush_on_the_way(name))

    async def _flush_on_the_way(self, name: str) -> None:
        try:
            await self._flush(name)
        finally:
            self._sealing.discard(name)

    async def _store_rows(self, rows: Sequence[Row]) -> list[ItemResult]:
        """Upserts rows grouped by collection; a failed group fails only its own items."""
        results: dict[int, ItemResult] = {}
        by_collection: dict[str, list[int]] = {}
        for position, row in enumerate(rows):
            by_collection.setdefault(row.collection, []).append(position)
        for collection, positions in by_collection.items():
            # Within one upsert the same id must appear once: the later item wins.
            latest = {rows[p].id: p for p in positions}
            chosen = sorted(latest.values())
            try:
                await self.store.upsert(
                    collection,
                    [rows[p].id for p in chosen],
                    np.stack([rows[p].vector for p in chosen]),
                    [rows[p].metadata for p in chosen],
                )
                for p in positions:
                    results[p] = ItemResult(rows[p].id)
                self._flush_if_long(collection)
            except LookalikeError as e:
                for p in positions:
                    results[p] = ItemResult(rows[p].id, e.code, f"item {rows[p].id!r}: not stored: {e.message}")
        return [results[p] for p in range(len(rows))]

    async def ingest(self, items: AsyncIterator[IngestItem], caller: str = "") -> AsyncIterator[ItemResult]:
        """Yields one result per item, in order, each only after its row is stored (or failed); `caller`, the
        client connection, whose later searches see these rows."""
        window: asyncio.Queue[asyncio.Task[Row | ItemResult] | None] = asyncio.Queue(self.config.ingest_window)
        unanswered = 0  # items read and not yet answered

        async def read() -> None:
            nonlocal unanswered
            async for item in items:
                unanswered += 1
                await window.put(asyncio.ensure_future(self._prepare_row(item, caller)))
                # While searches need the cores, fewer items in flight: the stream's next messages stay unread
                # and HTTP/2 flow control holds its client back (nothing is dropped).
                while self.slo.share < 1.0 and unanswered >= self.slo.read_window(self.config.ingest_window):
                    await asyncio.sleep(THROTTLED_READ_POLL_SECONDS)
            await window.put(None)

        reader = asyncio.ensure_future(read())
        waiting: list[asyncio.Task[Row | ItemResult]] = []
        touched: set[str] = set()
        try:
            finished = False
            while not finished:
                first = await _first_of(window, reader)
                if first is None:
                    break
                waiting = [first]
                while len(waiting) < MAX_UPSERT_ROWS and not window.empty():
                    task = window.get_nowait()
                    if task is None:
                        finished = True
                        break
                    waiting.append(task)
                prepared = [await task for task in waiting]
                rows = [p for p in prepared if isinstance(p, Row)]
                for name in {r.collection for r in rows} - touched:
                    self._writing[name] += 1
                    touched.add(name)
                stored = iter(await asyncio.gather(*(self._batcher.submit(r) for r in rows)))
                for p in prepared:
                    result = next(stored) if isinstance(p, Row) else p
                    metrics.ITEMS.labels(result.code).inc()
                    unanswered -= 1
                    yield result
                waiting = []
            await reader
        finally:
            # A stream's end is a natural point to seal its rows: Milvus then indexes them (Milvus Lite
            # searches unflushed rows by brute force: 250-700 ms a query at 5,000 rows, 15 ms indexed).
            for name in touched:
                self._writing[name] -= 1
                if not self._writing[name]:
                    del self._writing[name]
                self._settle_soon(name)
            reader.cancel()
            for task in waiting:
                task.cancel()
            while not window.empty():
                task = window.get_nowait()
                if task is not None:
                    task.cancel()


async def _first_of(window: asyncio.Queue[T], reader: asyncio.Future[None]) -> T:
    """The next window entry; if the reader failed first (a broken stream), its error."""
    getter = asyncio.ensure_future(window.get())
    await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    reader.result()  # raises the reader's error
    return await window.get()
