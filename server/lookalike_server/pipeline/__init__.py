"""The work behind every RPC, in plain Python and numpy types: one part per job, put together here.

catalog (collections and their settings), embedding (images to vectors), ingest (streams into Milvus),
search (queries to hits), ranking (every exact top-k), calibration (the recall guarantee and search plans),
and the store's async surface (async_store) their one way into Milvus. No part imports this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from ..async_store import AsyncStore
from ..batcher import INTERACTIVE
from ..config import ServerConfig
from ..embedder import Embedder
from ..memory_trim import MemoryTrimmer
from ..own_writes import OwnWrites
from ..search_slo import SearchSlo
from ..store import CollectionSpec, Store
from .calibration import Calibrator
from .catalog import Catalog
from .embedding import Embedding
from .ingest import Ingest
from .ranking import rank_by_distance, rerank
from .search import Searcher
from .types import CollectionInfo, Hit, IngestItem, ItemResult, Query, SearchOptions, check_id

__all__ = ["CollectionInfo", "Hit", "IngestItem", "ItemResult", "Pipeline", "Query", "SearchOptions", "check_id",
           "rank_by_distance", "rerank"]


class Pipeline:
    """Owns the parts; every service method calls into here."""

    def __init__(self, config: ServerConfig, embedder: Embedder, store: Store) -> None:
        self.config = config
        self.embedder = embedder
        self.store = AsyncStore(store)
        # The Search latency target: bulk work (ingest's inference, upserts, reads, flushes and recall
        # calibrations) yields to it.
        self.slo = SearchSlo(config.search_p99_target_ms)
        self.calibrator = Calibrator(self.store, self.slo)
        self.catalog = Catalog(config, embedder, self.store, self.calibrator)
        self.memory = MemoryTrimmer()  # the RSS follows what the server holds, not its high-water mark
        self.embedding = Embedding(config, embedder, pacer=self.slo)
        self.own_writes = OwnWrites()  # who wrote where: their reads wait for this server's writes
        self.ingest_streams = Ingest(config, self.catalog, self.embedding, self.store, self.calibrator, self.slo,
                                     self.own_writes)
        self.calibrator.writing = self.ingest_streams.writing  # no calibration while rows arrive
        self.searcher = Searcher(self.catalog, self.embedding, self.store, self.calibrator, self.slo,
                                 self.own_writes)

    @property
    def model_name(self) -> str:
        return self.embedder.card.name

    @property
    def milvus_down(self) -> str:
        """Why Milvus is unavailable, while the server's health watchdog finds it so ("" when it answers)."""
        return self.store.down

    @milvus_down.setter
    def milvus_down(self, why: str) -> None:
        self.store.down = why

    async def start(self) -> None:
        self.store.open()
        self.slo.start()
        self.memory.start()
        self.embedding.start()
        self.searcher.start()
        self.ingest_streams.start()
        await self.catalog.ensure_default_collection()

    async def close(self) -> None:
        await self.embedding.close()
        await self.searcher.close()
        await self.ingest_streams.close()
        await self.slo.close()
        self.memory.stop()
        await self.calibrator.close()
        await self.store.close()

    async def ping(self) -> None:
        await self.store.ping()

    # Collections

    async def spec(self, collection: str) -> CollectionSpec:
        return await self.catalog.spec(collection)

    async def create_collection(
        self, name: str, metric: str, index_type: str, model: str, index_params: dict[str, int] | None = None,
        min_recall: float = 0.0, dimension: int = 0, vectors_only: bool = False,
    ) -> CollectionInfo:
        return await self.catalog.create(name, metric, index_type, model, index_params, min_recall, dimension,
                                         vectors_only)

    async def list_collections(self) -> list[CollectionInfo]:
        return await self.catalog.list()

    async def describe_collection(self, collection: str) -> CollectionInfo:
        return await self.catalog.info(await self.catalog.spec(collection))

    async def drop_collection(self, collection: str) -> None:
        await self.catalog.drop(collection)

    # Embedding, ingest, search

    async def embed_image(self, data: bytes, priority: int = INTERACTIVE, deadline: float | None = None) -> np.ndarray:
        return await self.embedding.embed_image(data, priority, deadline)

    async def embed_many(self, items: Sequence[tuple[str, bytes]], deadline: float | None = None) -> list[ItemResult]:
        return await self.embedding.embed_many(items, deadline)

    async def embed_one(self, item_id: str, data: bytes, deadline: float | None = None) -> ItemResult:
        return await self.embedding.embed_one(item_id, data, deadline)

    async def embed_texts(self, items: Sequence[tuple[str, str]], deadline: float | None = None) -> list[ItemResult]:
        """Each (id, prompt) embedded by the text tower, or its own error: one bad prompt fails alone."""
        return await self.embedding.embed_texts(items, deadline)

    def ingest(self, items: AsyncIterator[IngestItem], caller: str = "") -> AsyncIterator[ItemResult]:
        return self.ingest_streams.ingest(items, caller)

    async def search(
        self, collection: str, queries: Sequence[Query], options: SearchOptions, deadline: float | None = None
    ) -> list[list[Hit]]:
        return await self.searcher.search(collection, queries, options, deadline)

    # Rows by id

    async def get(
        self, collection: str, ids: Sequence[str], with_vectors: bool, with_metadata: bool
    ) -> tuple[list[tuple[str, np.ndarray | None, dict[str, Any] | None]], list[str]]:
        spec = await self.catalog.spec(collection)
        rows = await self.store.get(spec.name, list(ids), with_vectors, with_metadata)
        found = [(i, *rows[i]) for i in ids if i in rows]
        return found, [i for i in ids if i not in rows]

    async def delete(self, collection: str, ids: Sequence[str], caller: str = "") -> int:
        spec = await self.catalog.spec(collection)
        if caller:
            self.own_writes.wrote(caller, spec.name)
        return await self.store.delete(spec.name, list(dict.fromkeys(ids)))
