"""Collections: their settings (which live in Milvus, cached briefly), creation, listing and dropping."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

from ..async_store import AsyncStore
from ..config import INDEX_TYPES, METRICS, ServerConfig
from ..embedder import Embedder
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..store import CollectionSpec
from .calibration import Calibrator
from .types import CollectionInfo

log = logging.getLogger(__name__)

# Milvus' largest vector dimension.
MAX_DIMENSION = 32_768
# How long a collection's settings are trusted before Milvus is asked again (another replica may drop it).
SPEC_CACHE_SECONDS = 10.0


class Catalog:
    def __init__(self, config: ServerConfig, embedder: Embedder, store: AsyncStore, calibrator: Calibrator) -> None:
        self.config = config
        self.embedder = embedder
        self.store = store
        self.calibrator = calibrator
        self._specs: dict[str, tuple[CollectionSpec, float]] = {}
        self._spec_loading: dict[str, asyncio.Future[CollectionSpec]] = {}

    @property
    def model_name(self) -> str:
        return self.embedder.card.name

    async def ensure_default_collection(self) -> None:
        name = self.config.default_collection
        if name not in await self.store.list_collections():
            # Another replica may create it at the same moment: that is fine.
            with contextlib.suppress(AlreadyExists):
                await self.create(name, self.config.default_metric, self.config.default_index, "")
        spec = await self.spec(name)
        if spec.model != self.model_name:
            log.warning("the default collection %r holds embeddings of model %r; this server embeds with %r",
                        name, spec.model, self.model_name)

    def name(self, collection: str) -> str:
        return collection or self.config.default_collection

    def cached(self, name: str) -> CollectionSpec | None:
        """The settings of a collection read before, however old; None if never read."""
        entry = self._specs.get(name)
        return entry[0] if entry else None

    async def spec(self, collection: str) -> CollectionSpec:
        """The collection's settings, which live in Milvus; cached briefly, since replicas share them."""
        name = self.name(collection)
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
        spec = await self.store.describe(name)
        if first:
            await self.store.ensure_loaded(name)
        self._specs[name] = (spec, now)
        return spec

    async def info(self, spec: CollectionSpec) -> CollectionInfo:
        """Row count, and the index parameters as Milvus itself reports them (not as we asked)."""
        rows = await self.store.row_count(spec.name)
        index = await self.store.describe_index(spec.name)
        params = {k: int(v) for k, v in index.get("params", {}).items() if str(v).isdigit()}
        return CollectionInfo(dataclasses.replace(spec, index_params=params), rows, self.embedder.provider,
                              self.embedder.precision, self.calibrator.calibrations_of(spec.name),
                              self._embeds_text(spec))

    async def create(
        self,
        name: str,
        metric: str,
        index_type: str,
        model: str,
        index_params: dict[str, int] | None = None,
        min_recall: float = 0.0,
        dimension: int = 0,
        vectors_only: bool = False,
    ) -> CollectionInfo:
        """A collection of the server's model; vectors-only (model "") when declared so or of another dimension."""
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
        if vectors_only and model:
            raise InvalidArgument(f"a vectors-only collection holds vectors computed elsewhere, not model {model!r}'s: "
                                  "leave the model empty or drop vectors_only")
        dimension = dimension or self.embedder.dimension
        if dimension != self.embedder.dimension and model:
            raise InvalidArgument(f"model {model!r} embeds {self.embedder.dimension}-d vectors, not {dimension}-d; "
                                  "leave the model empty for a vectors-only collection")
        # The dimension alone never labels vectors with our model: a 1280-d MobileNet vector fits as well.
        ours = dimension == self.embedder.dimension and not vectors_only
        spec = CollectionSpec(
            name, metric, index_type, self.model_name if ours else "", dimension,
            dict(index_params or {}), min_recall or 0.99,
        )
        await self.store.create(spec)
        self._specs[name] = (spec, time.monotonic())
        return CollectionInfo(spec, 0, self.embedder.provider, self.embedder.precision,
                              embeds_text=self._embeds_text(spec))

    def _embeds_text(self, spec: CollectionSpec) -> bool:
        return self.embedder.text is not None and bool(spec.model) and spec.model == self.model_name

    async def list(self) -> list[CollectionInfo]:
        infos = []
        for name in await self.store.list_collections():
            try:
                infos.append(await self.info(await self.spec(name)))
            except NotFound:
                continue  # someone else's collection in the same Milvus
        return infos

    async def drop(self, collection: str) -> None:
        name = self.name(collection)
        self._specs.pop(name, None)
        await self.store.drop(name)
