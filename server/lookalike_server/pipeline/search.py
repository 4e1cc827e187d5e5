"""Search: query vectors (given, stored, averaged or embedded), one plan from the calibrator, then Milvus'
candidates ordered exactly, or an exact scan where no index serves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import metrics
from ..async_store import VECTOR_REPLY_FLOATS, AsyncStore, with_id_set
from ..batcher import INTERACTIVE, MicroBatcher
from ..config import MAX_K, QUANTIZED_INDEXES
from ..errors import InvalidArgument, NotFound
from ..own_writes import OwnWrites
from ..search_slo import SearchSlo
from ..store import Candidate, CollectionSpec
from .calibration import Calibrator
from .catalog import Catalog
from .embedding import Embedding
from .ranking import BestPerBatch, rank_by_distance, rerank
from .types import Hit, Query, SearchOptions
from .vectors import check_vector, mean_of

# Up to this many restrict_ids become an `id in [...]` filter on the index search; larger sets are searched
# exactly by reading their vectors. bench/results/restrict_ids.json: at 50,000 ids the filter took 0.48 s
# (Milvus Lite) and 2.9 s (standalone) against 13.1 s and 58.5 s for reading the set's vectors, and a tag
# field or a temporary partition costs a rewrite of the set first (40-94 s).
RESTRICT_FILTER_MAX_IDS = 100_000
# Ids read per call when a large id set is searched exactly.
EXACT_IDS_PER_READ = 2000
# Offset + k beyond Milvus' top-k limit pages through an exact scan, which keeps (offset + k) candidates per
# query in memory: at most this many in all.
MAX_PAGED_RESULTS = 1_000_000
# Queries in one Milvus search call at most.
MAX_QUERIES_PER_MILVUS_CALL = 128
# A Milvus server takes one search call at a time per worker, up to this many at once; a second call starts
# beside a running one only once SEARCH_OVERLAP_AT queries wait. A standalone call took about 15 ms whether it
# held 4 or 12 queries, so waiting queries are better spent filling the next call (32 clients, 20,000 rows:
# 845 QPS against 701 when every free worker started at once; bench/search.py has the figures).
SEARCH_CALLS_IN_FLIGHT = 4
SEARCH_OVERLAP_AT = 8


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
    milvus_s: float = 0.0  # the Milvus time of the batch that served it: the rest of its wait was the queue's


# Each stage's histogram, looked up once (labels() takes a lock and builds a key per call).
_STAGE = {stage: metrics.SEARCH_STAGE_SECONDS.labels(stage) for stage in ("vectors", "queue", "milvus", "rank",
                                                                          "total")}


class Searcher:
    def __init__(self, catalog: Catalog, embedding: Embedding, store: AsyncStore, calibrator: Calibrator,
                 slo: SearchSlo | None, own_writes: OwnWrites) -> None:
        self.slo = slo  # told every search's latency, so bulk work yields when searches slow down
        self.own_writes = own_writes  # shared with Ingest: whose reads wait for this server's writes
        self.catalog = catalog
        self.embedding = embedding
        self.store = store
        self.calibrator = calibrator
        # Concurrent searches with the same parameters share one Milvus call: Milvus Lite spends about
        # 25 ms of Python per call whatever its size, so 32 queries in one call cost little more than one.
        self._batcher: MicroBatcher[_SearchJob, list[list[Candidate]]] = MicroBatcher(
            self._search_batch,
            None,  # a coroutine: its Milvus calls are made from the event loop, or hop to the store pool
            max_batch_size=MAX_QUERIES_PER_MILVUS_CALL,
            max_queue_delay=0.0,
            concurrency=1 if self.store.is_lite else SEARCH_CALLS_IN_FLIGHT,
            overlap_at=SEARCH_OVERLAP_AT,
            name="search-batcher",
        )

    def start(self) -> None:
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.close()

    # Query vectors

    async def _stored_vectors(
        self, spec: CollectionSpec, ids: Sequence[str], consistency: str
    ) -> dict[str, np.ndarray]:
        unique = list(dict.fromkeys(ids))
        stored = await self.store.get_vectors(spec.name, unique, consistency)
        missing = [i for i in ids if i not in stored]
        if missing and consistency == "Eventually":
            # An id acknowledged to another client a moment ago may not be applied yet: only then does a read
            # wait for this server's writes.
            stored |= await self.store.get_vectors(spec.name, list(dict.fromkeys(missing)), "Session")
            missing = [i for i in ids if i not in stored]
        if missing:
            raise NotFound(f"id {missing[0]!r} is not in collection {spec.name!r}"
                           + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return stored

    async def _query_vector(
        self, q: Query, spec: CollectionSpec, stored: dict[str, np.ndarray], deadline: float | None
    ) -> np.ndarray:
        if q.id is not None:
            return stored[q.id]
        if q.ids is not None:
            if not q.ids:
                raise InvalidArgument("a query by several ids needs at least one id")
            return mean_of([stored[i] for i in q.ids], spec)
        if q.vector is not None:
            return check_vector(q.vector, spec)
        if q.vectors is not None:
            if not q.vectors:
                raise InvalidArgument("a query by several vectors needs at least one vector")
            return mean_of([check_vector(v, spec) for v in q.vectors], spec)
        if q.image is not None:
            return await self.embedding.image_vector(q.image, spec, INTERACTIVE, deadline)
        if q.text is not None:
            return await self.embedding.text_vector([q.text], spec, deadline)
        if q.texts is not None:
            return await self.embedding.text_vector(q.texts, spec, deadline)
        raise InvalidArgument("a query needs a vector, image bytes, a stored id, ids or vectors")

    async def _query_vectors(
        self, spec: CollectionSpec, queries: Sequence[Query], consistency: str = "", deadline: float | None = None
    ) -> np.ndarray:
        wanted = [i for q in queries for i in ([q.id] if q.id is not None else list(q.ids or ()))]
        stored = await self._stored_vectors(spec, wanted, consistency) if wanted else {}
        if any(q.image is not None or q.text is not None or q.texts is not None for q in queries):
            # images and prompts are embedded concurrently
            vectors = await asyncio.gather(*(self._query_vector(q, spec, stored, deadline) for q in queries))
        else:  # nothing to wait for: no task per query
            vectors = [await self._query_vector(q, spec, stored, deadline) for q in queries]
        return np.stack(vectors).astype(np.float32, copy=False)

    # Search

    async def search(
        self, collection: str, queries: Sequence[Query], options: SearchOptions, deadline: float | None = None
    ) -> list[list[Hit]]:
        """Top k per query: Milvus' approximate candidates, re-ranked exactly by the native core."""
        started = time.perf_counter()
        try:
            return await self._search(collection, queries, options, deadline)
        finally:
            elapsed = time.perf_counter() - started
            _STAGE["total"].observe(elapsed)
            if self.slo is not None:
                self.slo.observe(elapsed)

    async def _search(
        self, collection: str, queries: Sequence[Query], options: SearchOptions, deadline: float | None
    ) -> list[list[Hit]]:
        if not 1 <= options.k <= MAX_K:
            raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {options.k}")
        if not queries:
            raise InvalidArgument("a search needs at least one query")
        if options.offset < 0 or (options.k + options.offset) * len(queries) > MAX_PAGED_RESULTS:
            raise InvalidArgument(f"offset must be 0 or more, and (offset + k) x queries at most "
                                  f"{MAX_PAGED_RESULTS:,}; got ({options.offset} + {options.k}) x {len(queries)}")
        if not 0.0 <= options.min_recall <= 1.0:
            raise InvalidArgument(f"min_recall must be between 0 and 1, got {options.min_recall}")
        spec = await self.catalog.spec(collection)
        consistency = self.own_writes.level(options.caller, spec.name, options.consistency)
        stage_started = time.perf_counter()
        vectors = await self._query_vectors(spec, queries, consistency, deadline)
        _STAGE["vectors"].observe(time.perf_counter() - stage_started)
        self.store.check()
        want = options.k + options.offset
        filter_expr = options.filter_expr
        if options.restrict_ids and len(options.restrict_ids) <= RESTRICT_FILTER_MAX_IDS:
            filter_expr = with_id_set(options.restrict_ids, filter_expr)
        if len(options.restrict_ids) > RESTRICT_FILTER_MAX_IDS:
            found = await self._exact_over_ids(spec, vectors, want, options)
        elif ((options.reverse and spec.metric == "l2") or want > MAX_K
              or (spec.index_type in QUANTIZED_INDEXES and want * spec.dimension > 1.2 * VECTOR_REPLY_FLOATS)):
            # No index finds the farthest points; Milvus returns at most MAX_K results, so deeper pages come
            # from an exact scan; and so does a quantized index when k candidates' vectors alone would
            # overflow a reply (k 16,384 at 1280-d).
            found = await self._exact_scan(spec, vectors, want, filter_expr, options)
        else:
            plan = self.calibrator.plan(spec, want, options.min_recall or spec.min_recall, bool(filter_expr))
            if plan.exact:  # no effort reaches the recall target: an exact scan replaces the index
                found = await self._exact_scan(spec, vectors, want, filter_expr, options)
            else:
                # For inner product and cosine, the least similar to q are the most similar to -q.
                probe = -vectors if options.reverse else vectors
                with_vectors = spec.index_type in QUANTIZED_INDEXES or options.include_vectors
                key = _SearchKey(spec.name, spec.index_type, plan.fetch, filter_expr, options.include_metadata,
                                 plan.effort, consistency, with_vectors)
                job = _SearchJob(key, spec, probe)
                stage_started = time.perf_counter()
                found = await self._batcher.submit(job, INTERACTIVE)
                _STAGE["queue"].observe(max(0.0, time.perf_counter() - stage_started - job.milvus_s))
                _STAGE["milvus"].observe(job.milvus_s)
                if spec.index_type not in QUANTIZED_INDEXES:
                    # Float indexes score candidates exactly already: merge and order Milvus' own scores.
                    stage_started = time.perf_counter()
                    ranked = rank_by_distance(found, want, spec.metric, options.reverse)
                    _STAGE["rank"].observe(time.perf_counter() - stage_started)
                    return [hits[options.offset :] for hits in ranked]
        stage_started = time.perf_counter()
        with metrics.RERANK_SECONDS.time():
            ranked = rerank(vectors, found, want, spec.metric, options.reverse)
        _STAGE["rank"].observe(time.perf_counter() - stage_started)
        return [hits[options.offset :] for hits in ranked]

    async def _search_batch(self, jobs: Sequence[_SearchJob]) -> list[list[list[Candidate]]]:
        """One Milvus search per group of jobs with the same parameters."""
        groups: dict[_SearchKey, list[int]] = {}
        for position, job in enumerate(jobs):
            groups.setdefault(job.key, []).append(position)
        results: list[list[list[Candidate]]] = [[] for _ in jobs]
        for key, positions in groups.items():
            vectors = np.concatenate([jobs[p].vectors for p in positions])
            milvus_started = time.perf_counter()
            found = await self.store.search(jobs[positions[0]].spec, vectors, key.limit, key.filter_expr,
                                            key.with_metadata, key.effort, key.consistency, key.with_vectors)
            milvus_s = time.perf_counter() - milvus_started
            start = 0
            for p in positions:
                jobs[p].milvus_s = milvus_s
                count = len(jobs[p].vectors)
                results[p] = found[start : start + count]
                start += count
        return results

    async def _exact_over_ids(
        self, spec: CollectionSpec, vectors: np.ndarray, want: int, options: SearchOptions
    ) -> list[list[Candidate]]:
        """Exact top candidates among a large id set, read in chunks; each chunk ranked off the event loop."""
        ids = list(dict.fromkeys(options.restrict_ids))
        best = BestPerBatch(vectors, want, spec.metric, options.reverse)
        for start in range(0, len(ids), EXACT_IDS_PER_READ):
            rows = await self.store.get(spec.name, ids[start : start + EXACT_IDS_PER_READ], True,
                                        options.include_metadata, options.filter_expr)
            if rows:
                keys = list(rows)
                batch = np.stack([rows[i][0] for i in keys])
                await asyncio.to_thread(best.add, keys, batch, [rows[i][1] for i in keys])
        return best.kept

    async def _exact_scan(
        self, spec: CollectionSpec, vectors: np.ndarray, want: int, filter_expr: str, options: SearchOptions
    ) -> list[list[Candidate]]:
        best = BestPerBatch(vectors, want, spec.metric, options.reverse)
        async for ids, batch, metadata in self.store.scan(spec.name, filter_expr, options.include_metadata):
            await asyncio.to_thread(best.add, ids, batch, metadata)
        return best.kept

