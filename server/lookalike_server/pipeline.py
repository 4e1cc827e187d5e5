"""The work behind every RPC, in plain Python and numpy types: embed, store, search, re-rank."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from . import _native, metrics
from .batcher import BULK, INTERACTIVE, MicroBatcher
from .config import INDEX_TYPES, MAX_K, METRICS, QUANTIZED_INDEXES, ServerConfig
from .embedder import Embedder
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, LookalikeError, NotFound, Unavailable
from .expressions import ids_in
from .imaging import image_to_tensor
from .recall import OVERFETCH_STEPS, Calibration, calibrate, default_effort
from .store import ID_MAX_BYTES, Candidate, CollectionSpec, Store
from .thread_priority import BULK_NICE, BulkGate, thread_pool

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
# Quantized indexes are asked for this many candidates per result, then re-ranked exactly, until the recall
# calibration measures how many they need (recall.OVERFETCH_STEPS).
OVERFETCH = OVERFETCH_STEPS[0]
# Up to this many restrict_ids become an `id in [...]` filter on the index search; larger sets are searched
# exactly by reading their vectors. bench/results/restrict_ids.json: at 50,000 ids the filter took 0.48 s
# (Milvus Lite) and 2.9 s (standalone) against 13.1 s and 58.5 s for reading the set's vectors, and a tag
# field or a temporary partition costs a rewrite of the set first (40-94 s).
RESTRICT_FILTER_MAX_IDS = 100_000
# Milvus' largest vector dimension.
MAX_DIMENSION = 32_768
# Offset + k beyond Milvus' top-k limit pages through an exact scan, which keeps (offset + k) candidates per
# query in memory: at most this many in all.
MAX_PAGED_RESULTS = 1_000_000
# Queries in one Milvus search call at most, and hits (queries x candidates) per call at most.
MAX_QUERIES_PER_MILVUS_CALL = 128
# A Milvus server takes one search call at a time per worker, up to this many at once; a second call starts
# beside a running one only once SEARCH_OVERLAP_AT queries wait. A standalone call took about 15 ms whether it
# held 4 or 12 queries, so waiting queries are better spent filling the next call (32 clients, 20,000 rows:
# 845 QPS against 701 when every free worker started at once; bench/search.py has the figures).
SEARCH_CALLS_IN_FLIGHT = 4
SEARCH_OVERLAP_AT = 8
MAX_RESULTS_PER_MILVUS_CALL = 32_768
# Candidate vectors per Milvus call at most (40 MB): a Milvus server sends no reply over 64 MB (measured: a
# calibration asking 102 queries x 320 candidates of 1280 floats was refused at 105 MB).
VECTOR_REPLY_FLOATS = 10_000_000
# A collection's calibration is checked at most this often, and redone when older than the maximum age
# or when its row count moved by more than 10% (Milvus Lite also builds indexes late, in the background).
CALIBRATION_CHECK_SECONDS = 10.0
CALIBRATION_MAX_AGE_SECONDS = 600.0
# An Ingest stream's end is when its collection is flushed (sealed, so Milvus indexes it) and its recall
# calibration checked; streams ending within this many seconds of each other share one flush and one check.
# Eight streams each flushing at their end had Milvus Lite seal eight small segments, each indexed and
# searched on its own, and spend 0.6 ms of CPU per ingested image on flushes.
SETTLE_DELAY_SECONDS = 0.5
# ... and while other streams still write to the collection, its flush waits for them (a flush seals a
# segment that Milvus then indexes beside the live ingest, which stalled interactive calls by up to 180 ms),
# but no longer than this after the first stream's end.
SETTLE_MAX_WAIT_SECONDS = 10.0
# How long a collection's settings are trusted before Milvus is asked again (another replica may drop it).
SPEC_CACHE_SECONDS = 10.0


@dataclass
class IngestItem:
    id: str
    collection: str = ""
    image: bytes | None = None
    vector: Sequence[float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Set when the item was already found wrong on the way in (e.g. an unfinished chunked upload).
    error: LookalikeError | None = None


@dataclass
class ItemResult:
    id: str
    code: str = "OK"
    message: str = ""
    vector: np.ndarray | None = None


@dataclass
class Query:
    """One query: exactly one of these is set. Several ids or vectors are searched by their mean."""

    vector: Sequence[float] | None = None
    image: bytes | None = None
    id: str | None = None
    ids: Sequence[str] | None = None
    vectors: Sequence[Sequence[float]] | None = None
    text: str | None = None


@dataclass
class SearchOptions:
    k: int
    filter_expr: str = ""
    include_metadata: bool = False
    include_vectors: bool = False
    reverse: bool = False
    offset: int = 0
    restrict_ids: Sequence[str] = ()
    consistency: str = ""
    min_recall: float = 0.0  # 0: the collection's own target


@dataclass
class Hit:
    id: str
    score: float
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass
class CollectionInfo:
    spec: CollectionSpec
    row_count: int
    execution_provider: str
    model_precision: str
    calibrations: list[Calibration] = field(default_factory=list)


@dataclass(frozen=True)
class _SearchKey:
    """Searches with equal keys can share one Milvus call."""

    collection: str
    index_type: str
    limit: int
    filter_expr: str
    with_metadata: bool
    effort: int
    consistency: str
    with_vectors: bool


@dataclass
class _SearchJob:
    key: _SearchKey
    spec: CollectionSpec
    vectors: np.ndarray


@dataclass
class _EmbedJob:
    """One image for the embed batcher: its bytes, which the inference thread decodes (on a CPU), or the
    tensor a decoding thread made from them (on a GPU)."""

    image: bytes | None = None
    tensor: np.ndarray | None = None


@dataclass
class _Row:
    collection: str
    id: str
    vector: np.ndarray
    metadata: dict[str, Any]


def check_id(item_id: str) -> None:
    if not item_id:
        raise InvalidArgument("empty id: every item needs an id of 1 to 512 bytes")
    size = len(item_id.encode("utf-8"))
    if size > ID_MAX_BYTES:
        raise InvalidArgument(f"id of {size} bytes is over the limit of {ID_MAX_BYTES} bytes")


class Pipeline:
    """Owns the embedder, the store and the thread pools; every service method calls into here."""

    def __init__(self, config: ServerConfig, embedder: Embedder, store: Store) -> None:
        self.config = config
        self.embedder = embedder
        self.store = store
        cores = os.cpu_count() or 1
        # Bulk decoding and inference get every core at a lower priority; interactive calls (Search, Embed)
        # have their own threads at normal priority, so they never queue behind an ingest's backlog of
        # JPEGs nor share the cores with it evenly.
        # ... and they step aside (between units of work) while an interactive call is in flight.
        self.bulk_gate = BulkGate()
        # On a GPU the bulk unit that would step aside is a batch on the device, which frees no core for the
        # interactive call, and the decoders have cores enough beside it at their lower priority.
        gate = None if embedder.on_gpu else self.bulk_gate
        # On a GPU, decoding threads feed the device beside it. On a CPU, where decoding and inference share
        # the cores anyway, each inference thread decodes its own batch's images straight into the batch:
        # separate decoding threads there only added threads that take turns on the same cores (2 decoders
        # beside 2 inference runs made inference 10% slower per image, 9.5 against 8.7 ms) and one more
        # hand-over per image (8-stream ingest: 12.3-13.0 ms of server CPU an image, against 12.5-13.7).
        self.decode_in_inference = not embedder.on_gpu
        self._decode_pool = thread_pool(config.decode_workers or cores, "decode", BULK_NICE, gate)
        self._interactive_pool = thread_pool(2, "decode-interactive")
        self._inference_pool = thread_pool(embedder.concurrent_runs, "inference", BULK_NICE, gate)
        self._interactive_inference_pool = thread_pool(1, "inference-interactive")
        # On a CPU, batches of 4 cost the least CPU per image here (10.0 ms vs 11.3 at 8 and 15.6 at 32), and
        # short batches keep an interactive Embed from waiting long behind bulk ingest.
        max_batch = config.max_batch_size or (64 if embedder.on_gpu else 4)
        # Ingest images between the network and their embedding, across all streams: memory stays flat.
        self._ingest_slots = asyncio.Semaphore(4 * max_batch * embedder.concurrent_runs)
        # Milvus Lite runs in this process and is not known to be thread-safe: one caller at a time.
        self._store_pool = ThreadPoolExecutor(1 if store.is_lite else 8, thread_name_prefix="milvus")
        self._embed_batcher: MicroBatcher[_EmbedJob, np.ndarray] = MicroBatcher(
            self._embed_batch,
            self._inference_pool,
            max_batch_size=max_batch,
            max_queue_delay=config.max_queue_delay_ms / 1000.0,
            preferred_batch_sizes=[b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch],
            concurrency=embedder.concurrent_runs,
            name="embed-batcher",
            interactive_executor=self._interactive_inference_pool,
        )
        self._specs: dict[str, tuple[CollectionSpec, float]] = {}
        self._spec_loading: dict[str, asyncio.Future[CollectionSpec]] = {}
        # Collections with a flush pending after an ingest (see _settle_soon), and those flushes under way.
        self._settle_timers: dict[str, asyncio.TimerHandle] = {}
        self._settle_asked: dict[str, float] = {}  # when a collection's pending flush was first asked for
        self._writing: collections.Counter[str] = collections.Counter()  # Ingest streams writing, by collection
        self._background: set[asyncio.Future[None]] = set()
        # Why Milvus is unavailable, while the server's health watchdog finds it so ("" when it answers).
        self.milvus_down = ""
        # Recall calibration per (collection, target), measured in the background.
        self._calibrations: dict[tuple[str, float], Calibration] = {}
        self._calibration_checked: dict[tuple[str, float], float] = {}
        # Calibration is background work: it must not take the cores from interactive calls.
        self._calibration_pool = thread_pool(1, "calibrate", BULK_NICE)
        self._calibrating: set[tuple[str, float]] = set()
        # Concurrent searches with the same parameters share one Milvus call: Milvus Lite spends about
        # 25 ms of Python per call whatever its size, so 32 queries in one call cost little more than one.
        self._search_batcher: MicroBatcher[_SearchJob, list[list[Candidate]]] = MicroBatcher(
            self._search_batch,
            None,  # a coroutine: its Milvus calls are made from the event loop, or hop to the store pool
            max_batch_size=MAX_QUERIES_PER_MILVUS_CALL,
            max_queue_delay=0.0,
            concurrency=1 if store.is_lite else SEARCH_CALLS_IN_FLIGHT,
            overlap_at=SEARCH_OVERLAP_AT,
            name="search-batcher",
        )
        self._store_batcher: MicroBatcher[_Row, ItemResult] = MicroBatcher(
            self._store_rows,
            self._store_pool,
            max_batch_size=MAX_UPSERT_ROWS,
            max_queue_delay=0.0,
            concurrency=1 if store.is_lite else UPSERT_CALLS_IN_FLIGHT,
            overlap_at=UPSERT_OVERLAP_AT,
            name="upsert-batcher",
        )

    @property
    def model_name(self) -> str:
        return self.embedder.card.name

    async def start(self) -> None:
        self.store.open_async()
        self._embed_batcher.start()
        self._search_batcher.start()
        self._store_batcher.start()
        await self._ensure_default_collection()

    async def close(self) -> None:
        await self._embed_batcher.close()
        await self._search_batcher.close()
        await self._store_batcher.close()
        for timer in self._settle_timers.values():
            timer.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for pool in (self._decode_pool, self._interactive_pool, self._inference_pool,
                     self._interactive_inference_pool, self._store_pool, self._calibration_pool):
            pool.shutdown(wait=True, cancel_futures=True)
        await self.store.close_async()

    async def _in_store(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._check_milvus()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_pool, lambda: fn(*args, **kwargs))

    def _check_milvus(self) -> None:
        # While Milvus is known to be down, calls fail at once instead of waiting on a half-started server.
        if self.milvus_down:
            raise Unavailable(self.milvus_down)

    async def ping(self) -> None:
        """Raises a LookalikeError unless Milvus answers; the health watchdog's probe, never gated."""
        await asyncio.get_running_loop().run_in_executor(self._store_pool, self.store.ping)

    # Collections

    async def _ensure_default_collection(self) -> None:
        name = self.config.default_collection
        if name not in await self._in_store(self.store.list_collections):
            # Another replica may create it at the same moment: that is fine.
            with contextlib.suppress(AlreadyExists):
                await self.create_collection(name, self.config.default_metric, self.config.default_index, "")
        spec = await self.spec(name)
        if spec.model != self.model_name:
            log.warning("the default collection %r holds embeddings of model %r; this server embeds with %r",
                        name, spec.model, self.model_name)

    def _name(self, collection: str) -> str:
        return collection or self.config.default_collection

    async def spec(self, collection: str) -> CollectionSpec:
        """The collection's settings, which live in Milvus; cached briefly, since replicas share them."""
        name = self._name(collection)
        now = time.monotonic()
        cached = self._specs.get(name)
        if cached is not None and now - cached[1] < SPEC_CACHE_SECONDS:
            return cached[0]
        # One read for every caller that finds the entry missing or stale: the first items of 8 Ingest streams
        # each asked Milvus Lite on its own (128 describes in a row on its thread, stalling calls beside them).
        loading = self._spec_loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load_spec(name, first=cached is None))
            self._spec_loading[name] = loading
            loading.add_done_callback(lambda _: self._spec_loading.pop(name, None))
        return await asyncio.shield(loading)

    async def _load_spec(self, name: str, first: bool) -> CollectionSpec:
        now = time.monotonic()
        spec = await self._in_store(self.store.describe, name)
        if first:
            await self._in_store(self.store.ensure_loaded, name)
        self._specs[name] = (spec, now)
        return spec

    async def _info(self, spec: CollectionSpec) -> CollectionInfo:
        """Row count, and the index parameters as Milvus itself reports them (not as we asked)."""
        rows = await self._in_store(self.store.row_count, spec.name)
        index = await self._in_store(self.store.describe_index, spec.name)
        params = {k: int(v) for k, v in index.get("params", {}).items() if str(v).isdigit()}
        calibrations = [c for (name, _), c in self._calibrations.items() if name == spec.name]
        return CollectionInfo(dataclasses.replace(spec, index_params=params), rows, self.embedder.provider,
                              self.embedder.precision, calibrations)

    async def create_collection(
        self,
        name: str,
        metric: str,
        index_type: str,
        model: str,
        index_params: dict[str, int] | None = None,
        min_recall: float = 0.0,
        dimension: int = 0,
    ) -> CollectionInfo:
        """A collection of the server's model; with another `dimension`, a vectors-only one (model "")."""
        if not name:
            raise InvalidArgument("a collection needs a name")
        metric = metric or self.config.default_metric
        index_type = index_type or self.config.default_index
        if metric not in METRICS:
            raise InvalidArgument(f"metric must be one of {METRICS}, got {metric!r}")
        if index_type not in INDEX_TYPES:
            raise InvalidArgument(f"index type must be one of {INDEX_TYPES}, got {index_type!r}")
        if model and model != self.model_name:
            raise FailedPrecondition(f"this server serves model {self.model_name!r}, not {model!r}")
        if not 0.0 <= min_recall <= 1.0:
            raise InvalidArgument(f"min_recall must be between 0 and 1, got {min_recall}")
        if not 0 <= dimension <= MAX_DIMENSION:
            raise InvalidArgument(f"dimension must be between 1 and {MAX_DIMENSION} (0: the model's), got {dimension}")
        dimension = dimension or self.embedder.dimension
        if dimension != self.embedder.dimension and model:
            raise InvalidArgument(f"model {model!r} embeds {self.embedder.dimension}-d vectors, not {dimension}-d; "
                                  "leave the model empty for a vectors-only collection")
        spec = CollectionSpec(
            name, metric, index_type, self.model_name if dimension == self.embedder.dimension else "", dimension,
            dict(index_params or {}), min_recall or 0.99,
        )
        await self._in_store(self.store.create, spec)
        self._specs[name] = (spec, time.monotonic())
        return CollectionInfo(spec, 0, self.embedder.provider, self.embedder.precision)

    async def list_collections(self) -> list[CollectionInfo]:
        infos = []
        for name in await self._in_store(self.store.list_collections):
            try:
                infos.append(await self._info(await self.spec(name)))
            except NotFound:
                continue  # someone else's collection in the same Milvus
        return infos

    async def describe_collection(self, collection: str) -> CollectionInfo:
        return await self._info(await self.spec(collection))

    async def drop_collection(self, collection: str) -> None:
        name = self._name(collection)
        self._specs.pop(name, None)
        await self._in_store(self.store.drop, name)

    # Embedding

    def _embed_batch(self, jobs: Sequence[_EmbedJob]) -> list[np.ndarray | LookalikeError]:
        """Each job's tensor, or its decoded image, goes straight into one batch buffer; an image that does not
        decode fails alone (its error is its result), and the others are embedded and L2-normalised."""
        card = self.embedder.card
        batch = np.empty((len(jobs), 3, card.height, card.width), dtype=np.float32)
        results: list[np.ndarray | LookalikeError] = []
        rows: list[int] = []  # results' positions whose images are in the batch, in batch order
        for job in jobs:
            row = batch[len(rows)]
            try:
                if job.tensor is not None:
                    row[...] = job.tensor
                else:
                    image_to_tensor(job.image or b"", card, self.config.max_image_pixels, out=row)
            except LookalikeError as e:
                results.append(e)
                continue
            rows.append(len(results))
            results.append(row)  # replaced by its embedding below
        if rows:
            with metrics.EMBED_SECONDS.time():
                vectors = self.embedder.embed(batch[: len(rows)])
            _native.normalize_rows(vectors)
            for position, vector in zip(rows, vectors, strict=True):
                results[position] = vector
        return results

    async def embed_image(self, data: bytes, priority: int = INTERACTIVE, deadline: float | None = None) -> np.ndarray:
        """Image bytes to an L2-normalised embedding; InvalidArgument if the bytes are no image.

        `deadline` is in event-loop time: past it, the image is not computed (DeadlineExceeded).
        """
        if priority != INTERACTIVE:
            return await self._embed(self._decode_pool, data, priority, deadline)
        with self.bulk_gate.interactive():
            return await self._embed(self._interactive_pool, data, priority, deadline)

    async def _embed(self, decode_pool: Executor, data: bytes, priority: int, deadline: float | None) -> np.ndarray:
        if self.decode_in_inference:
            return await self._embed_batcher.submit(_EmbedJob(image=data), priority, deadline)
        tensor = await asyncio.get_running_loop().run_in_executor(
            decode_pool, image_to_tensor, data, self.embedder.card, self.config.max_image_pixels
        )
        return await self._embed_batcher.submit(_EmbedJob(tensor=tensor), priority, deadline)

    async def embed_many(self, items: Sequence[tuple[str, bytes]], deadline: float | None = None) -> list[ItemResult]:
        return list(await asyncio.gather(*(self.embed_one(i, data, deadline) for i, data in items)))

    async def embed_one(self, item_id: str, data: bytes, deadline: float | None = None) -> ItemResult:
        try:
            return ItemResult(item_id, vector=await self.embed_image(data, INTERACTIVE, deadline))
        except LookalikeError as e:
            return ItemResult(item_id, e.code, f"image {item_id!r}: {e.message}")

    def _check_vector(self, values: Sequence[float], spec: CollectionSpec) -> np.ndarray:
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
            vector = np.array(values, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != spec.dimension:
            raise InvalidArgument(
                f"vector has {vector.shape[1]} dimensions, collection {spec.name!r} has {spec.dimension}"
            )
        if not np.isfinite(vector).all():
            raise InvalidArgument("vector contains NaN or infinity")
        if spec.metric == "cosine":
            _native.normalize_rows(vector)
        return vector[0]

    async def _image_vector(
        self, data: bytes, spec: CollectionSpec, priority: int = INTERACTIVE, deadline: float | None = None
    ) -> np.ndarray:
        if not spec.model:
            raise FailedPrecondition(
                f"collection {spec.name!r} holds {spec.dimension}-d vectors computed elsewhere (no model): "
                "send vectors or stored ids, not images"
            )
        if spec.model != self.model_name:
            raise FailedPrecondition(
                f"collection {spec.name!r} holds embeddings of model {spec.model!r}; "
                f"this server embeds with {self.model_name!r}"
            )
        return await self.embed_image(data, priority, deadline)

    # Ingest

    async def _prepare_row(self, item: IngestItem) -> _Row | ItemResult:
        try:
            if item.error is not None:
                raise item.error
            check_id(item.id)
            self._check_metadata(item.metadata)
            spec = await self.spec(item.collection)
            if item.vector is not None:
                vector = self._check_vector(item.vector, spec)
            elif item.image is not None:
                async with self._ingest_slots:
                    vector = await self._image_vector(item.image, spec, BULK)
            else:
                raise InvalidArgument("item has neither image bytes nor a vector")
            return _Row(spec.name, item.id, vector, item.metadata)
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
            task = asyncio.ensure_future(self._settle(name))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        self._settle_timers[name] = loop.call_later(SETTLE_DELAY_SECONDS, start)

    async def _settle(self, name: str) -> None:
        # Rows stored from here on need a flush of their own: a stream ending now schedules the next one.
        self._settle_timers.pop(name, None)
        self._settle_asked.pop(name, None)
        try:
            await self._in_store(self.store.flush, name)
        except Exception as e:  # Milvus down or the collection dropped: the next stream's end tries again
            log.warning("flushing collection %s failed: %s", name, e)
        self._calibrate_soon(name)

    def _store_rows(self, rows: Sequence[_Row]) -> list[ItemResult]:
        """Runs on the store pool: upserts rows grouped by collection; a failed group fails only its own items."""
        results: dict[int, ItemResult] = {}
        by_collection: dict[str, list[int]] = {}
        for position, row in enumerate(rows):
            by_collection.setdefault(row.collection, []).append(position)
        for collection, positions in by_collection.items():
            # Within one upsert the same id must appear once: the later item wins.
            latest = {rows[p].id: p for p in positions}
            chosen = sorted(latest.values())
            try:
                self._check_milvus()
                self.store.upsert(
                    collection,
                    [rows[p].id for p in chosen],
                    np.stack([rows[p].vector for p in chosen]),
                    [rows[p].metadata for p in chosen],
                )
                for p in positions:
                    results[p] = ItemResult(rows[p].id)
            except LookalikeError as e:
                for p in positions:
                    results[p] = ItemResult(rows[p].id, e.code, f"item {rows[p].id!r}: not stored: {e.message}")
        return [results[p] for p in range(len(rows))]

    async def ingest(self, items: AsyncIterator[IngestItem]) -> AsyncIterator[ItemResult]:
        """Yields one result per item, in order, each only after its row is stored (or failed)."""
        window: asyncio.Queue[asyncio.Task[_Row | ItemResult] | None] = asyncio.Queue(self.config.ingest_window)

        async def read() -> None:
            async for item in items:
                await window.put(asyncio.ensure_future(self._prepare_row(item)))
            await window.put(None)

        reader = asyncio.ensure_future(read())
        waiting: list[asyncio.Task[_Row | ItemResult]] = []
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
                rows = [p for p in prepared if isinstance(p, _Row)]
                for name in {r.collection for r in rows} - touched:
                    self._writing[name] += 1
                    touched.add(name)
                stored = iter(await asyncio.gather(*(self._store_batcher.submit(r) for r in rows)))
                for p in prepared:
                    result = next(stored) if isinstance(p, _Row) else p
                    metrics.ITEMS.labels(result.code).inc()
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

    # Search

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")

    async def _stored_vectors(
        self, spec: CollectionSpec, ids: Sequence[str], consistency: str
    ) -> dict[str, np.ndarray]:
        unique = list(dict.fromkeys(ids))
        if self.store.aio is not None:
            self._check_milvus()
            stored = await self.store.get_vectors_async(spec.name, unique, consistency)
        else:
            rows = await self._in_store(self.store.get, spec.name, unique, True, False)
            stored = {i: v for i, (v, _) in rows.items()}
        missing = [i for i in ids if i not in stored]
        if missing:
            raise NotFound(f"id {missing[0]!r} is not in collection {spec.name!r}"
                           + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return stored

    def _mean(self, vectors: list[np.ndarray], spec: CollectionSpec) -> np.ndarray:
        # In float64: the float32 sum of valid vectors can overflow (2 x 3e38).
        mean = np.mean(np.stack(vectors), axis=0, dtype=np.float64).astype(np.float32).reshape(1, -1)
        if spec.metric == "cosine":
            _native.normalize_rows(mean)
        return mean[0]

    async def _query_vector(
        self, q: Query, spec: CollectionSpec, stored: dict[str, np.ndarray], deadline: float | None
    ) -> np.ndarray:
        if q.id is not None:
            return stored[q.id]
        if q.ids is not None:
            if not q.ids:
                raise InvalidArgument("a query by several ids needs at least one id")
            return self._mean([stored[i] for i in q.ids], spec)
        if q.vector is not None:
            return self._check_vector(q.vector, spec)
        if q.vectors is not None:
            if not q.vectors:
                raise InvalidArgument("a query by several vectors needs at least one vector")
            return self._mean([self._check_vector(v, spec) for v in q.vectors], spec)
        if q.image is not None:
            return await self._image_vector(q.image, spec, INTERACTIVE, deadline)
        if q.text is not None:
            raise FailedPrecondition(
                f"model {self.model_name!r} has no text tower: search by image, vector or id instead"
            )
        raise InvalidArgument("a query needs a vector, image bytes, a stored id, ids or vectors")

    async def _query_vectors(
        self, spec: CollectionSpec, queries: Sequence[Query], consistency: str = "", deadline: float | None = None
    ) -> np.ndarray:
        wanted = [i for q in queries for i in ([q.id] if q.id is not None else list(q.ids or ()))]
        stored = await self._stored_vectors(spec, wanted, consistency) if wanted else {}
        if any(q.image is not None for q in queries):  # images are embedded concurrently
            vectors = await asyncio.gather(*(self._query_vector(q, spec, stored, deadline) for q in queries))
        else:  # nothing to wait for: no task per query
            vectors = [await self._query_vector(q, spec, stored, deadline) for q in queries]
        return np.stack(vectors).astype(np.float32, copy=False)

    async def search(
        self, collection: str, queries: Sequence[Query], options: SearchOptions, deadline: float | None = None
    ) -> list[list[Hit]]:
        """Top k per query: Milvus' approximate candidates, re-ranked exactly by the native core."""
        self._check_k(options.k)
        if not queries:
            raise InvalidArgument("a search needs at least one query")
        if options.offset < 0 or (options.k + options.offset) * len(queries) > MAX_PAGED_RESULTS:
            raise InvalidArgument(f"offset must be 0 or more, and (offset + k) x queries at most "
                                  f"{MAX_PAGED_RESULTS:,}; got ({options.offset} + {options.k}) x {len(queries)}")
        if not 0.0 <= options.min_recall <= 1.0:
            raise InvalidArgument(f"min_recall must be between 0 and 1, got {options.min_recall}")
        spec = await self.spec(collection)
        vectors = await self._query_vectors(spec, queries, options.consistency, deadline)
        self._check_milvus()
        want = options.k + options.offset
        filter_expr = options.filter_expr
        if options.restrict_ids and len(options.restrict_ids) <= RESTRICT_FILTER_MAX_IDS:
            filter_expr = _and(ids_in(options.restrict_ids), filter_expr)
        if len(options.restrict_ids) > RESTRICT_FILTER_MAX_IDS:
            found = await self._in_store(
                self._exact_over_ids, spec, vectors, want, options
            )
        elif ((options.reverse and spec.metric == "l2") or want > MAX_K or self._needs_exact(spec, want, options)
              or (spec.index_type in QUANTIZED_INDEXES and want * spec.dimension > 1.2 * VECTOR_REPLY_FLOATS)):
            # No index finds the farthest points; Milvus returns at most MAX_K results, so deeper pages come
            # from an exact scan; an index that cannot reach the recall target is replaced by one; and so is
            # a quantized one when k candidates' vectors alone would overflow a reply (k 16,384 at 1280-d).
            found = await self._in_store(self._exact_scan, spec, vectors, want, filter_expr, options)
        else:
            target = options.min_recall or spec.min_recall
            fetch = _fetch(spec, want, self._overfetch(spec, want, target))
            effort = self._effort(spec, want, fetch, target)
            if filter_expr:
                # The calibration measured unfiltered searches; a filtered graph search needs a wider beam
                # (measured: 1,000 of 50,000 ids, recall@10 0.78 at the calibrated ef 64, 1.0 at 512).
                effort = max(effort, default_effort(spec, fetch))
            # For inner product and cosine, the least similar to q are the most similar to -q.
            probe = -vectors if options.reverse else vectors
            with_vectors = spec.index_type in QUANTIZED_INDEXES or options.include_vectors
            key = _SearchKey(spec.name, spec.index_type, fetch, filter_expr, options.include_metadata, effort,
                             options.consistency, with_vectors)
            found = await self._search_batcher.submit(_SearchJob(key, spec, probe), INTERACTIVE)
            if spec.index_type not in QUANTIZED_INDEXES:
                # Float indexes score candidates exactly already: merge and order Milvus' own scores.
                ranked = rank_by_distance(found, want, spec.metric, options.reverse)
                return [hits[options.offset :] for hits in ranked]
        with metrics.RERANK_SECONDS.time():
            ranked = rerank(vectors, found, want, spec.metric, options.reverse)
        return [hits[options.offset :] for hits in ranked]

    def _effort(self, spec: CollectionSpec, want: int, fetch: int, target: float) -> int:
        """The calibrated ef/nprobe for this k and recall target; a generous default until measured."""
        if spec.index_type == "FLAT":
            return 0
        key = (spec.name, round(target, 4))
        self._maybe_calibrate(spec, key)
        calibration = self._calibrations.get(key)
        return calibration.effort_for(want) if calibration else default_effort(spec, fetch)

    def _overfetch(self, spec: CollectionSpec, want: int, target: float) -> int:
        """How many candidates per result to re-rank from a quantized index: as calibrated, else OVERFETCH."""
        calibration = self._calibrations.get((spec.name, round(target, 4)))
        return calibration.overfetch_for(want) if calibration else OVERFETCH

    def _needs_exact(self, spec: CollectionSpec, want: int, options: SearchOptions) -> bool:
        key = (spec.name, round(options.min_recall or spec.min_recall, 4))
        self._maybe_calibrate(spec, key)  # an exact fallback is re-examined as the collection changes
        calibration = self._calibrations.get(key)
        return calibration is not None and calibration.exact_fallback

    def _calibrate_soon(self, name: str) -> None:
        """After an ingest, checks the recall calibration at once, in the background: otherwise the first
        searches pay for it (a FiftyOne benchmark's k=10 queries had a p99 of 308 ms against a p50 of 13)."""
        cached = self._specs.get(name)
        if cached is None or cached[0].index_type == "FLAT":
            return
        spec = cached[0]
        key = (name, round(spec.min_recall, 4))
        self._calibration_checked.pop(key, None)
        self._maybe_calibrate(spec, key)

    def _maybe_calibrate(self, spec: CollectionSpec, key: tuple[str, float]) -> None:
        now = time.monotonic()
        if key in self._calibrating or now - self._calibration_checked.get(key, -1e9) < CALIBRATION_CHECK_SECONDS:
            return
        self._calibration_checked[key] = now
        self._calibrating.add(key)
        future = asyncio.get_running_loop().run_in_executor(self._calibration_pool, self._calibrate, spec, key)
        future.add_done_callback(lambda f: self._calibration_done(key, f))

    def _calibrate(self, spec: CollectionSpec, key: tuple[str, float]) -> Calibration | None:
        """Runs on the calibration thread: re-measures when the collection grew, shrank or aged."""
        current = self._calibrations.get(key)
        if current is not None:
            state = self.store.index_state(spec.name)
            if state is not None and current.index_state is not None and not current.index_state <= state:
                # Some segment it was measured on is no longer searched as it was (an index rebuilt or handed
                # over, segments compacted): the measured effort says nothing about its successor. Until that
                # is measured, searches use the generous default. (Segments only added are covered by the row
                # count below; rows not yet indexed are searched exactly.)
                self._calibrations.pop(key, None)
                log.info("collection %s: the segments or indexes Milvus searches changed since its recall "
                         "calibration; measuring again", spec.name)
            else:
                rows = self.store.row_count(spec.name)
                fresh = time.time() - current.measured_at < CALIBRATION_MAX_AGE_SECONDS
                if fresh and abs(rows - current.rows) <= 0.1 * current.rows:
                    return current

        def search(queries: np.ndarray, k: int, effort: int, overfetch: int = OVERFETCH) -> list[list[str]]:
            quantized = spec.index_type in QUANTIZED_INDEXES
            fetch = _fetch(spec, k, overfetch)
            step = _queries_per_call(fetch, spec.dimension, quantized)  # wide over-fetches: few queries a call
            ranked: list[list[Hit]] = []
            for start in range(0, len(queries), step):
                chunk = queries[start : start + step]
                found = self.store.search(spec.name, spec, chunk, fetch, "", False, effort, "Strong",
                                          with_vectors=quantized)
                ranked += rerank(chunk, found, k, spec.metric) if quantized else rank_by_distance(found, k, spec.metric)
            return [[h.id for h in hits] for hits in ranked]

        return calibrate(self.store, spec, key[1], search)

    def _calibration_done(self, key: tuple[str, float], future: asyncio.Future[Calibration | None]) -> None:
        self._calibrating.discard(key)
        try:
            result = future.result()
        except Exception:
            log.exception("calibrating %s failed; searches keep the default effort", key[0])
            return
        if result is None:
            # Too small to matter, or changing too fast to measure: back to the generous default.
            self._calibrations.pop(key, None)
        else:
            self._calibrations[key] = result

    async def _search_batch(self, jobs: Sequence[_SearchJob]) -> list[list[list[Candidate]]]:
        """One Milvus search per group of jobs with the same parameters."""
        groups: dict[_SearchKey, list[int]] = {}
        for position, job in enumerate(jobs):
            groups.setdefault(job.key, []).append(position)
        results: list[list[list[Candidate]]] = [[] for _ in jobs]
        for key, positions in groups.items():
            vectors = np.concatenate([jobs[p].vectors for p in positions])
            # Milvus caps a reply and its work per call: at most MAX_RESULTS_PER_MILVUS_CALL hits, and
            # VECTOR_REPLY_FLOATS when the hits carry their vectors.
            step = _queries_per_call(key.limit, jobs[positions[0]].spec.dimension, key.with_vectors)
            found = []
            for start in range(0, len(vectors), step):
                args = (key.collection, jobs[positions[0]].spec, vectors[start : start + step], key.limit,
                        key.filter_expr, key.with_metadata, key.effort, key.consistency, key.with_vectors)
                if self.store.aio is not None:
                    found += await self.store.search_async(*args)
                else:
                    found += await self._in_store(self.store.search, *args)
            start = 0
            for p in positions:
                count = len(jobs[p].vectors)
                results[p] = found[start : start + count]
                start += count
        return results

    def _exact_over_ids(
        self, spec: CollectionSpec, vectors: np.ndarray, want: int, options: SearchOptions
    ) -> list[list[Candidate]]:
        """Exact top candidates among a large id set, read in chunks (runs on the store thread)."""
        ids = list(dict.fromkeys(options.restrict_ids))

        def batches() -> Iterator[tuple[list[str], np.ndarray, list[Any]]]:
            for start in range(0, len(ids), 2000):
                rows = self.store.get(spec.name, ids[start : start + 2000], True, options.include_metadata,
                                      options.filter_expr)
                if rows:
                    keys = list(rows)
                    yield keys, np.stack([rows[i][0] for i in keys]), [rows[i][1] for i in keys]
        return _best_per_batch(vectors, batches(), want, spec.metric, options.reverse)

    def _exact_scan(
        self, spec: CollectionSpec, vectors: np.ndarray, want: int, filter_expr: str, options: SearchOptions
    ) -> list[list[Candidate]]:
        batches = self.store.scan(spec.name, filter_expr, options.include_metadata)
        return _best_per_batch(vectors, batches, want, spec.metric, options.reverse)

    async def get(
        self, collection: str, ids: Sequence[str], with_vectors: bool, with_metadata: bool
    ) -> tuple[list[tuple[str, np.ndarray | None, dict[str, Any] | None]], list[str]]:
        spec = await self.spec(collection)
        rows = await self._in_store(self.store.get, spec.name, list(ids), with_vectors, with_metadata)
        found = [(i, *rows[i]) for i in ids if i in rows]
        return found, [i for i in ids if i not in rows]

    async def delete(self, collection: str, ids: Sequence[str]) -> int:
        spec = await self.spec(collection)
        return await self._in_store(self.store.delete, spec.name, list(dict.fromkeys(ids)))


def _fetch(spec: CollectionSpec, want: int, overfetch: int = OVERFETCH) -> int:
    """Candidates asked of Milvus: exactly k from float indexes, over-fetched from quantized ones for the re-rank.

    A float index (FLAT, HNSW, IVF_FLAT) scores its candidates exactly, so the top k of a larger fetch are the k
    it returns for limit k at the same ef or nprobe: over-fetching there only made pymilvus parse 4x the hits.
    """
    if spec.index_type not in QUANTIZED_INDEXES:
        return want
    # Each candidate comes with its vector: the list stops where one query's reply would grow too large.
    return min(MAX_K, max(overfetch * want, want + 32), max(want, VECTOR_REPLY_FLOATS // spec.dimension))


def _queries_per_call(limit: int, dimension: int, with_vectors: bool) -> int:
    """Queries per Milvus search call, so that a reply stays within what Milvus sends."""
    hits = min(MAX_RESULTS_PER_MILVUS_CALL, VECTOR_REPLY_FLOATS // dimension) if with_vectors \
        else MAX_RESULTS_PER_MILVUS_CALL
    return max(1, hits // limit)


async def _first_of(window: asyncio.Queue[T], reader: asyncio.Future[None]) -> T:
    """The next window entry; if the reader failed first (a broken stream), its error."""
    getter = asyncio.ensure_future(window.get())
    await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    reader.result()  # raises the reader's error
    return await window.get()


def _and(a: str, b: str) -> str:
    return f"({a}) and ({b})" if a and b else a or b


def _best_per_batch(
    vectors: np.ndarray, batches: Iterable[tuple[list[str], np.ndarray, list[Any]]], want: int, metric: str,
    reverse: bool,
) -> list[list[Candidate]]:
    """Keeps each query's `want` best rows of every batch; a final re-rank merges them exactly."""
    kept: list[list[Candidate]] = [[] for _ in range(len(vectors))]
    for ids, batch, metadata in batches:
        rows = np.broadcast_to(np.arange(len(ids), dtype=np.int64), (len(vectors), len(ids)))
        top, _ = _native.rerank(vectors, batch, np.ascontiguousarray(rows), min(want, len(ids)),
                                "l2" if metric == "l2" else "ip", reverse)
        for q, row_list in enumerate(top):
            kept[q].extend(Candidate(ids[r], batch[r], metadata[r]) for r in row_list if r >= 0)
    return kept


def rank_by_distance(found: list[list[Candidate]], k: int, metric: str, reverse: bool = False) -> list[list[Hit]]:
    """Orders candidates by the exact distances Milvus computed (float indexes), ties by id.

    Milvus returns the best first for its probe: smallest l2, largest ip/cosine. A reverse search probed
    with -q, so the most similar to -q are the least similar to q, whose scores are the negated distances.
    """
    sign = -1.0 if reverse else 1.0
    ranked = []
    for hits in found:
        unique = list({c.id: c for c in hits}.values())
        if metric == "l2":
            unique.sort(key=lambda c: (c.distance, c.id))
        else:
            unique.sort(key=lambda c: (-c.distance, c.id))
        ranked.append([Hit(c.id, sign * c.distance, c.metadata, c.vector) for c in unique[:k]])
    return ranked


def rerank(
    vectors: np.ndarray, found: list[list[Candidate]], k: int, metric: str, reverse: bool = False
) -> list[list[Hit]]:
    """Scores every candidate exactly against its query and keeps the top k, ties by id."""
    ids = sorted({c.id for hits in found for c in hits})
    if not ids:
        return [[] for _ in found]
    position = {i: n for n, i in enumerate(ids)}
    first = {}
    for hits in found:
        for c in hits:
            first.setdefault(c.id, c)
    candidates = np.stack([first[i].vector for i in ids]).astype(np.float32, copy=False)
    width = max(len(hits) for hits in found)
    rows = np.full((len(found), width), -1, dtype=np.int64)
    for q, hits in enumerate(found):
        rows[q, : len(hits)] = [position[c.id] for c in hits]
    top_rows, scores = _native.rerank(vectors, candidates, rows, k, "l2" if metric == "l2" else "ip", reverse)
    return [
        [
            Hit(ids[r], float(s), first[ids[r]].metadata, first[ids[r]].vector)
            for r, s in zip(top_rows[q], scores[q], strict=True)
            if r >= 0 and not math.isnan(s)
        ]
        for q in range(len(found))
    ]
