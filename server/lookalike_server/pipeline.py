"""The work behind every RPC, in plain Python and numpy types: embed, store, search, re-rank."""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from . import _native
from .batcher import MicroBatcher
from .config import INDEX_TYPES, MAX_K, METRICS, ServerConfig
from .embedder import Embedder
from .errors import FailedPrecondition, InvalidArgument, LookalikeError, NotFound
from .imaging import image_to_tensor
from .store import ID_MAX_BYTES, Candidate, CollectionSpec, Store

log = logging.getLogger(__name__)

T = TypeVar("T")
# Rows written to Milvus in one upsert at most.
MAX_UPSERT_ROWS = 256
# Lossy indexes are asked for this many candidates per result, then re-ranked exactly.
OVERFETCH = 2


@dataclass
class IngestItem:
    id: str
    collection: str = ""
    image: bytes | None = None
    vector: Sequence[float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ItemResult:
    id: str
    code: str = "OK"
    message: str = ""
    vector: np.ndarray | None = None


@dataclass
class Query:
    vector: Sequence[float] | None = None
    image: bytes | None = None
    id: str | None = None


@dataclass
class Hit:
    id: str
    score: float
    metadata: dict[str, Any] | None = None


@dataclass
class CollectionInfo:
    spec: CollectionSpec
    row_count: int
    execution_provider: str


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
        self._decode_pool = ThreadPoolExecutor(config.decode_workers or cores, thread_name_prefix="decode")
        self._inference_pool = ThreadPoolExecutor(1, thread_name_prefix="inference")
        # Milvus Lite runs in this process and is not known to be thread-safe: one caller at a time.
        self._store_pool = ThreadPoolExecutor(1 if store.is_lite else 8, thread_name_prefix="milvus")
        self._embed_batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(
            self._embed_batch,
            self._inference_pool,
            max_batch_size=config.max_batch_size,
            max_queue_delay=config.max_queue_delay_ms / 1000.0,
            name="embed-batcher",
        )
        self._specs: dict[str, CollectionSpec] = {}

    @property
    def model_name(self) -> str:
        return self.embedder.card.name

    async def start(self) -> None:
        self._embed_batcher.start()
        await self._ensure_default_collection()

    async def close(self) -> None:
        await self._embed_batcher.close()
        for pool in (self._decode_pool, self._inference_pool, self._store_pool):
            pool.shutdown(wait=True, cancel_futures=True)

    async def _in_store(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_pool, lambda: fn(*args, **kwargs))

    # Collections

    async def _ensure_default_collection(self) -> None:
        name = self.config.default_collection
        if name not in await self._in_store(self.store.list_collections):
            await self.create_collection(name, self.config.default_metric, self.config.default_index, "")

    def _name(self, collection: str) -> str:
        return collection or self.config.default_collection

    async def spec(self, collection: str) -> CollectionSpec:
        name = self._name(collection)
        spec = self._specs.get(name)
        if spec is None:
            spec = await self._in_store(self.store.describe, name)
            self._specs[name] = spec
        return spec

    async def _info(self, spec: CollectionSpec) -> CollectionInfo:
        rows = await self._in_store(self.store.row_count, spec.name)
        return CollectionInfo(spec, rows, self.embedder.provider)

    async def create_collection(self, name: str, metric: str, index_type: str, model: str) -> CollectionInfo:
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
        spec = CollectionSpec(name, metric, index_type, self.model_name, self.embedder.dimension)
        await self._in_store(self.store.create, spec)
        self._specs[name] = spec
        return CollectionInfo(spec, 0, self.embedder.provider)

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

    def _embed_batch(self, tensors: Sequence[np.ndarray]) -> list[np.ndarray]:
        vectors = self.embedder.embed(np.stack(tensors))
        _native.normalize_rows(vectors)
        return list(vectors)

    async def embed_image(self, data: bytes) -> np.ndarray:
        """Image bytes to an L2-normalised embedding; InvalidArgument if the bytes are no image."""
        loop = asyncio.get_running_loop()
        tensor = await loop.run_in_executor(
            self._decode_pool, image_to_tensor, data, self.embedder.card, self.config.max_image_pixels
        )
        return await self._embed_batcher.submit(tensor)

    async def embed_many(self, items: Sequence[tuple[str, bytes]]) -> list[ItemResult]:
        return list(await asyncio.gather(*(self.embed_one(item_id, data) for item_id, data in items)))

    async def embed_one(self, item_id: str, data: bytes) -> ItemResult:
        try:
            return ItemResult(item_id, vector=await self.embed_image(data))
        except LookalikeError as e:
            return ItemResult(item_id, e.code, f"image {item_id!r}: {e.message}")

    def _check_vector(self, values: Sequence[float], spec: CollectionSpec) -> np.ndarray:
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

    async def _image_vector(self, data: bytes, spec: CollectionSpec) -> np.ndarray:
        if spec.model != self.model_name:
            raise FailedPrecondition(
                f"collection {spec.name!r} holds embeddings of model {spec.model!r}; "
                f"this server embeds with {self.model_name!r}"
            )
        return await self.embed_image(data)

    # Ingest

    async def _prepare_row(self, item: IngestItem) -> _Row | ItemResult:
        try:
            check_id(item.id)
            spec = await self.spec(item.collection)
            if item.vector is not None:
                vector = self._check_vector(item.vector, spec)
            elif item.image is not None:
                vector = await self._image_vector(item.image, spec)
            else:
                raise InvalidArgument("item has neither image bytes nor a vector")
            return _Row(spec.name, item.id, vector, item.metadata)
        except LookalikeError as e:
            return ItemResult(item.id, e.code, f"item {item.id!r}: {e.message}")

    async def _store_rows(self, rows: list[_Row]) -> list[ItemResult]:
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
                await self._in_store(
                    self.store.upsert,
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
                stored = iter(await self._store_rows(rows)) if rows else iter(())
                for p in prepared:
                    yield next(stored) if isinstance(p, _Row) else p
                waiting = []
            await reader
        finally:
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

    async def _query_vectors(self, spec: CollectionSpec, queries: Sequence[Query]) -> np.ndarray:
        by_id = [q.id for q in queries if q.id is not None]
        stored = {}
        if by_id:
            stored = await self._in_store(self.store.get, spec.name, by_id, True, False)
            missing = [i for i in by_id if i not in stored]
            if missing:
                raise NotFound(f"id {missing[0]!r} is not in collection {spec.name!r}"
                               + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
        vectors: list[Any] = []
        for q in queries:
            if q.id is not None:
                vectors.append(stored[q.id][0])
            elif q.vector is not None:
                vectors.append(self._check_vector(q.vector, spec))
            elif q.image is not None:
                vectors.append(self._image_vector(q.image, spec))
            else:
                raise InvalidArgument("a query needs a vector, image bytes or a stored id")
        pending = [i for i, v in enumerate(vectors) if asyncio.iscoroutine(v)]
        for i, v in zip(pending, await asyncio.gather(*(vectors[i] for i in pending)), strict=True):
            vectors[i] = v
        return np.stack(vectors).astype(np.float32, copy=False)

    async def search(
        self,
        collection: str,
        queries: Sequence[Query],
        k: int,
        filter_expr: str = "",
        include_metadata: bool = False,
    ) -> list[list[Hit]]:
        """Top k per query: Milvus' approximate candidates, re-ranked exactly by the native core."""
        self._check_k(k)
        if not queries:
            raise InvalidArgument("a search needs at least one query")
        spec = await self.spec(collection)
        vectors = await self._query_vectors(spec, queries)
        fetch = k if spec.index_type == "FLAT" else min(MAX_K, max(OVERFETCH * k, k + 32))
        found: list[list[Candidate]] = await self._in_store(
            self.store.search, spec.name, spec, vectors, fetch, filter_expr, include_metadata
        )
        return rerank(vectors, found, k, spec.metric)

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


async def _first_of(window: asyncio.Queue[T], reader: asyncio.Future[None]) -> T:
    """The next window entry; if the reader failed first (a broken stream), its error."""
    getter = asyncio.ensure_future(window.get())
    await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    reader.result()  # raises the reader's error
    return await window.get()


def rerank(vectors: np.ndarray, found: list[list[Candidate]], k: int, metric: str) -> list[list[Hit]]:
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
    top_rows, scores = _native.rerank(vectors, candidates, rows, k, "l2" if metric == "l2" else "ip")
    return [
        [
            Hit(ids[r], float(s), first[ids[r]].metadata)
            for r, s in zip(top_rows[q], scores[q], strict=True)
            if r >= 0 and not math.isnan(s)
        ]
        for q in range(len(found))
    ]
