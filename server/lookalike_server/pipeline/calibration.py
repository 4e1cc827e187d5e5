"""The recall guarantee: measure, per collection, the least search effort that reaches `min_recall`.

Milvus' approximate indexes trade recall for speed, and how much depends on the data (HNSW's defaults
gave recall@10 of 0.16 on random 1280-d vectors and 1.0 on clustered photos here). So the server
measures: sample queries (stored vectors, and new points among them), compute their exact neighbours in
the native core, and find the smallest ef (HNSW) or nprobe (IVF) whose over-fetched, exactly re-ranked
results reach the target. Each query is scored without the rows it was made from (leave-one-out): those
an index finds trivially, and new queries have no such row. Until a collection is calibrated, searches
use a generous default.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from .. import metrics
from ..async_store import AsyncStore
from ..config import QUANTIZED_INDEXES
from ..search_slo import SearchSlo
from ..served_index import IndexState
from ..store import CollectionSpec
from ..thread_priority import BULK_NICE, thread_pool
from .ranking import OVERFETCH, BestPerBatch, fetch_size, ranked_ids, rerank

log = logging.getLogger(__name__)
T = TypeVar("T")
# The calibration's searches: (queries, k, effort, over-fetch) -> the ranked ids of each query's top k.
Search = Callable[..., Awaitable[list[list[str]]]]

CALIBRATION_KS = (10, 100)
SAMPLE_QUERIES = 64
# Up to this many rows the reference is exact (every row read once); above, the reference is the
# index searched at its highest effort (exact for IVF, near-exact for HNSW) and says so.
EXACT_REFERENCE_MAX_ROWS = 200_000
# From 16 on Milvus Lite, whose per-search work grows with ef (5,000 rows, k=10: 4.2 ms a search at ef 16,
# 4.5 at 64). A Milvus server starts at 64: lookalike's own QPS there was the same at ef 16 and 64
# (998 and 1,020-1,132 from 32 clients), so the narrower beam only gave up recall margin on new data.
# A search's ef is at least 2k either way.
HNSW_EFFORTS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
HNSW_SERVER_MIN_EFFORT = 64
IVF_EFFORTS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Candidates per result re-ranked exactly from a quantized index. Where no effort reaches the target at
# the first, wider lists are measured in turn: IVF_PQ built coarser than our default (m 320 on 50,000 random
# 1280-d rows, every list probed) put 0.57 of the true top 10 in a list of 20, 0.86 in 80 and 0.985 in 320.
OVERFETCH_STEPS = (2, 8, 32)
# Sample queries made by moving a stored row this many times its nearest-neighbour distance (new_points).
MOVED_BY = 4.0
# Before a collection is calibrated (or below the size worth calibrating): generous settings.
MIN_ROWS = 1_000
# Exact scans replace an index that misses the target only up to this size; above it the highest effort
# serves. Reading rows out of Milvus Lite costs about 0.6 ms each (20,000 x 1280 took 12 s), so a larger
# exact scan per search would stall every other call.
EXACT_FALLBACK_MAX_ROWS = 5_000
# A calibration is thrown away when the collection changed by more than this while it was measured:
# its reference is then not the truth for the rows being searched.
STABLE_CHANGE = 0.01


@dataclass(frozen=True)
class Calibration:
    target: float
    rows: int
    efforts: dict[int, int]  # k -> the least effort reaching the target
    recalls: dict[int, float]  # k -> the recall measured at that effort
    exact_reference: bool
    measured_at: float
    # True when no effort reached the target: searches fall back to exact scans in the native core.
    exact_fallback: bool = False
    overfetch: dict[int, int] = field(default_factory=dict)  # k -> candidates per result (quantized indexes)
    # The segments and indexes it was measured on (served_index): another state needs another measurement.
    index_state: IndexState | None = None

    def overfetch_for(self, k: int) -> int:
        """Over-fetch for any k: the calibrated one for the nearest k at or above, else the widest measured."""
        for calibrated_k in sorted(self.overfetch):
            if k <= calibrated_k:
                return self.overfetch[calibrated_k]
        return max(self.overfetch.values(), default=OVERFETCH_STEPS[0])

    def effort_for(self, k: int) -> int:
        """Effort for any k: the calibrated one for the nearest k at or above, scaled beyond the last."""
        for calibrated_k in sorted(self.efforts):
            if k <= calibrated_k:
                return self.efforts[calibrated_k]
        last = max(self.efforts)
        return int(self.efforts[last] * k / last)


def default_effort(spec: CollectionSpec, fetch: int) -> int:
    """The effort used before calibration: generous, since the data is not yet known."""
    if spec.index_type == "HNSW":
        return max(512, 4 * fetch)
    if spec.index_type.startswith("IVF") or spec.index_type == "SCANN":
        return max(32, spec.index_params.get("nlist", 128) // 2)
    return 0


def _efforts(spec: CollectionSpec) -> tuple[int, ...]:
    if spec.index_type == "HNSW":
        return HNSW_EFFORTS
    nlist = spec.index_params.get("nlist", 128)
    return (*tuple(e for e in IVF_EFFORTS if e < nlist), nlist)


async def on_bulk_thread(pool: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) off the event loop: on the calibration's low-priority thread (or any, without one)."""
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


async def exact_reference(
    store: AsyncStore, spec: CollectionSpec, queries: np.ndarray, k: int, cpu: Executor | None = None
) -> list[list[str]]:
    """The true top k of each query, ranked (ties by id, as live searches rank them), from every stored row: an
    exact scan as a live search's (ranking.BestPerBatch), its arithmetic on the calibration's thread."""
    best = BestPerBatch(queries, k, spec.metric, reverse=False)
    async for ids, vectors, metadata in store.scan(spec.name):
        await on_bulk_thread(cpu, best.add, ids, vectors, metadata)
    return [[hit.id for hit in hits] for hits in rerank(queries, best.kept, k, spec.metric)]


async def new_points(
    store: AsyncStore, spec: CollectionSpec, ids: list[str], rows: np.ndarray, search: Search, effort: int, seed: int,
) -> tuple[np.ndarray, list[set[str]]]:
    """New query points among the data, made from each row and its nearest other row, with the rows whose
    ranking they leave out: for the first half of the rows, the midpoint of the two (both left out); for the
    rest, the row moved four times its distance to that neighbour in a random direction (none left out). The
    calibration asks the target of each kind on its own.

    A point drawn from each dimension's spread is a pessimistic query on real data: it lies between the
    clusters, far from every photo (20,000 clustered rows: recall 0.99 only at ef 512, while new points of
    the same clusters got 1.0 at 64). Midpoints of neighbours stand where new photos and means of similar
    samples do, but lie on a graph index's own edges: on 3,000 random 64-d rows at HNSW ef 64, stored rows
    and midpoints measured 0.995 where fresh queries got 0.966 (FAISS HNSW). Rows moved off their place by
    four times the neighbour distance measured what fresh queries got (0.966 at ef 64, 0.995 against 0.996
    at 128; twice the distance still measured 0.999 at 128, and the standalone's searches then fell to 0.983)
    and stayed at 1.0 on clustered rows, so they keep the sample honest for fresh queries without the
    pessimism of points between clusters.
    """
    found = await search(rows, 2, effort)
    nearest = [next((hit for hit in hits if hit != own), None) for own, hits in zip(ids, found, strict=True)]
    vectors = await store.get(spec.name, [n for n in nearest if n is not None], True, False)
    made = [(row, own, n) for row, own, n in zip(rows, ids, nearest, strict=True) if n in vectors]
    rng = np.random.default_rng(seed)
    points, left_out = [], []
    for position, (row, own, n) in enumerate(made):
        neighbour = vectors[n][0]
        if position < len(made) // 2:
            points.append((row + neighbour) / 2)
            left_out.append({own, n})
        else:
            direction = rng.standard_normal(len(row))
            direction *= MOVED_BY * np.linalg.norm(row - neighbour) / max(np.linalg.norm(direction), 1e-12)
            points.append(row + direction)
            left_out.append(set())
    return np.asarray(points, dtype=np.float32).reshape(len(made), rows.shape[1]), left_out


def _without(ranked: list[list[str]], excluded: list[set[str]], k: int) -> list[list[str]]:
    """Each ranking without the rows its query was made from, cut to k."""
    return [[i for i in ids if i not in made_from][:k] for ids, made_from in zip(ranked, excluded, strict=True)]


async def calibrate(
    store: AsyncStore, spec: CollectionSpec, target: float, search: Search, cpu: Executor | None = None,
) -> Calibration | None:
    """Measures the least effort per k reaching `target`; None when the collection is too small to matter.

    `search(queries, k, effort, overfetch)` runs lookalike's own search path (over-fetch and exact re-rank)
    and returns the ranked ids of the top k per query. A quantized index that misses the target at every
    effort is measured again with a wider over-fetch (OVERFETCH_STEPS), at its highest effort first.
    """
    rows = await store.row_count(spec.name)
    if rows < MIN_ROWS or spec.index_type == "FLAT":
        return None
    started = time.monotonic()
    index_state = await store.wait_for_index(spec.name)
    if index_state is None:
        # Rows not yet served by their index are searched another way (exactly, or through a server's interim
        # index), so what would be measured now is not the index: measured again at the next check.
        return None
    offset = random.Random(rows).randrange(0, max(1, rows - SAMPLE_QUERIES))
    efforts = _efforts(spec)
    if spec.index_type == "HNSW":
        # ef beyond the row count adds nothing: the graph either reaches a row or it does not.
        lowest = HNSW_EFFORTS[0] if await store.engine_is_lite() else HNSW_SERVER_MIN_EFFORT
        efforts = tuple(e for e in efforts if lowest <= e <= max(rows, lowest))
    ids, rows_read = await store.page(spec.name, offset, SAMPLE_QUERIES)
    # A third stored rows (each scored without itself), two thirds new points among them.
    third = len(ids) // 3
    points, left_out = await new_points(store, spec, ids[third:], rows_read[third:], search, efforts[-1], seed=rows)
    queries = np.concatenate([rows_read[:third], points])
    excluded = [{own} for own in ids[:third]] + left_out
    made = len(points)  # new_points: midpoints first, then moved rows
    kinds = np.array(["stored"] * third + ["midpoint"] * (made // 2) + ["moved"] * (made - made // 2))
    # Each is searched for k + spare and scored on the first k of the rest.
    spare = max((len(made_from) for made_from in excluded), default=0)
    exact = rows <= EXACT_REFERENCE_MAX_ROWS
    top_k = max(CALIBRATION_KS)
    steps = OVERFETCH_STEPS if spec.index_type in QUANTIZED_INDEXES else OVERFETCH_STEPS[:1]
    reference = _without(
        await exact_reference(store, spec, queries, top_k + spare, cpu) if exact
        else await search(queries, top_k + spare, efforts[-1], steps[-1]),
        excluded, top_k,
    )
    chosen: dict[int, int] = {}
    recalls: dict[int, float] = {}
    overfetch: dict[int, int] = {}

    async def measure(k: int, effort: int, factor: int, truth: list[set[str]]) -> float:
        found = _without(await search(queries, k + spare, effort, factor), excluded, k)
        per_query = np.array([len(set(f) & t) / max(1, len(t)) for f, t in zip(found, truth, strict=True)])
        # Each kind of query must reach the target on its own (on random rows the moved ones are the hardest,
        # and a mean over all three let ef 64 pass where fresh queries got 0.94), and clear it by one standard
        # error of its sample: 21 queries of k=10 measure recall to about +-0.007, and a bare pass at ef 128
        # left fresh queries at 0.983-1.0 (bench/results/recall_under_load.json).
        by_kind = [per_query[kinds == kind] for kind in np.unique(kinds)]
        recall = min(float(r.mean()) for r in by_kind)
        margin = max(math.sqrt(target * (1 - target) / (len(r) * k)) for r in by_kind)
        chosen[k], recalls[k], overfetch[k] = effort, recall, factor
        return recall - margin

    for k in CALIBRATION_KS:
        truth = [set(ranked[:k]) for ranked in reference]
        for n, factor in enumerate(steps):
            # A wider list is tried at the highest effort first: only if it reaches the target there is the
            # least effort looked for (each wide search moves many vectors).
            if n > 0 and await measure(k, efforts[-1], factor, truth) < target:
                continue
            for effort in efforts:
                if await measure(k, effort, factor, truth) >= target:
                    break
            if recalls[k] >= target:
                break
        if recalls[k] < target:
            log.warning("collection %s: recall@%d reaches only %.3f at the highest %s effort %d (target %.2f); "
                        "rebuild it with a stronger index (up to %d rows its searches fall back to exact scans)",
                        spec.name, k, recalls[k], spec.index_type, chosen[k], target, EXACT_FALLBACK_MAX_ROWS)
    log.info("calibrated %s (%d rows, %s reference) in %.1f s: effort %s, recall %s, over-fetch %s", spec.name,
             rows, "exact" if exact else "highest-effort", time.monotonic() - started, chosen,
             {k: round(r, 3) for k, r in recalls.items()}, overfetch)
    rows_after = await store.row_count(spec.name)
    if abs(rows_after - rows) > STABLE_CHANGE * rows:
        log.info("calibration of %s discarded: its rows went from %d to %d while it was measured; "
                 "it is measured again once they settle", spec.name, rows, rows_after)
        return None
    if await store.index_state(spec.name) != index_state:
        log.info("calibration of %s discarded: Milvus changed the segments or indexes that answer its searches "
                 "while it was measured; it is measured again at the next check", spec.name)
        return None
    fallback = any(recall < target for recall in recalls.values()) and rows <= EXACT_FALLBACK_MAX_ROWS
    return Calibration(target, rows, chosen, recalls, exact, time.time(), fallback, overfetch, index_state)


async def search_for_calibration(
    store: AsyncStore, spec: CollectionSpec, queries: np.ndarray, k: int, effort: int, overfetch: int = OVERFETCH,
    cpu: Executor | None = None,
) -> list[list[str]]:
    """lookalike's own search path (over-fetch, exact re-rank or Milvus' exact float scores) through the same
    store surface as live searches: the ranked ids of each query's top k at this effort."""
    quantized = spec.index_type in QUANTIZED_INDEXES
    fetch = fetch_size(spec, k, overfetch)
    found = await store.search(spec, queries, fetch, "", False, effort, "Strong", with_vectors=quantized)
    return await on_bulk_thread(cpu, ranked_ids, queries, found, k, spec)


# A collection's calibration is checked at most this often while it is searched: redone when older than the
# maximum age, when its row count moved by more than 10%, or when a segment it was measured on was replaced.
CALIBRATION_CHECK_SECONDS = 10.0
CALIBRATION_MAX_AGE_SECONDS = 600.0
# While searches run near their latency target a due calibration waits for them to calm down, at most this
# long: its scans and searches compete with theirs, but searches without one run at the generous default.
CALIBRATION_MAX_DEFER_SECONDS = 60.0
# A calibration is measured on rows that hold still: while this server's ingest writes to the collection, or
# its rows moved by more than STABLE_CHANGE between two checks (another writer), a due one waits and searches
# keep the generous default. Under a steady ingest each measurement (a full scan and hundreds of searches,
# 21-30 s at 17,000-20,000 rows, beside live searches) was discarded at its end for the rows that came
# meanwhile, and its searches at the highest efforts (recall measured against moving rows looks low) took
# Search's p99 to 1.5 s; a throttled ingest moved too few rows between checks to tell by the count alone.


@dataclass(frozen=True)
class SearchPlan:
    """How one search runs: by an exact scan, or through the index at this effort and over-fetch."""

    exact: bool
    effort: int
    overfetch: int
    fetch: int  # candidates asked of Milvus per query


class Calibrator:
    """Keeps each (collection, recall target)'s calibration, measured in the background, and plans searches."""

    def __init__(self, store: AsyncStore, slo: SearchSlo | None = None) -> None:
        self.store = store
        self.slo = slo
        self._calibrations: dict[tuple[str, float], Calibration] = {}
        self._checked: dict[tuple[str, float], float] = {}
        self._rows_seen: dict[tuple[str, float], int] = {}  # the row count at the last check
        # Whether this server's ingest writes to a collection now (the Pipeline wires in Ingest.writing).
        self.writing: Callable[[str], bool] = lambda name: False
        self._running: dict[tuple[str, float], asyncio.Task[Calibration | None]] = {}
        # A calibration runs on the event loop through the store's async surface, as searches do; its
        # arithmetic (exact top-k over every row) runs here, so that it never takes the cores from searches.
        self._pool = thread_pool(1, "calibrate", BULK_NICE)

    async def close(self) -> None:
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def calibrations_of(self, name: str) -> list[Calibration]:
        return [c for (collection, _), c in self._calibrations.items() if collection == name]

    def plan(self, spec: CollectionSpec, want: int, target: float, filtered: bool) -> SearchPlan:
        """The one planning call of a search: the calibrated effort and over-fetch for this k and target (a
        generous default until measured), or an exact scan where no effort reaches the target."""
        if spec.index_type == "FLAT":
            return SearchPlan(False, 0, OVERFETCH, fetch_size(spec, want))
        key = (spec.name, round(target, 4))
        self._maybe_calibrate(spec, key)
        calibration = self._calibrations.get(key)
        overfetch = calibration.overfetch_for(want) if calibration else OVERFETCH
        fetch = fetch_size(spec, want, overfetch)
        if calibration is not None and calibration.exact_fallback:
            return SearchPlan(True, 0, overfetch, fetch)
        effort = calibration.effort_for(want) if calibration else default_effort(spec, fetch)
        if filtered:
            # The calibration measured unfiltered searches; a filtered graph search needs a wider beam
            # (measured: 1,000 of 50,000 ids, recall@10 0.78 at the calibrated ef 64, 1.0 at 512).
            effort = max(effort, default_effort(spec, fetch))
        return SearchPlan(False, effort, overfetch, fetch)

    def calibrate_soon(self, spec: CollectionSpec) -> None:
        """After an ingest, checks the recall calibration at once, in the background: otherwise the first
        searches pay for it (a FiftyOne benchmark's k=10 queries had a p99 of 308 ms against a p50 of 13)."""
        if spec.index_type == "FLAT":
            return
        key = (spec.name, round(spec.min_recall, 4))
        self._checked.pop(key, None)
        self._maybe_calibrate(spec, key, settled=True)

    def _maybe_calibrate(self, spec: CollectionSpec, key: tuple[str, float], settled: bool = False) -> None:
        """Starts a check of the calibration in the background, at most every CALIBRATION_CHECK_SECONDS;
        `settled`: an ingest just ended (its rows need not be watched, unless other streams still write)."""
        now = time.monotonic()
        if key in self._running or now - self._checked.get(key, -1e9) < CALIBRATION_CHECK_SECONDS:
            return
        self._checked[key] = now
        task = asyncio.ensure_future(self._calibrate(spec, key, settled))
        self._running[key] = task
        task.add_done_callback(lambda f: self._done(key, f))

    async def _calibrate(
        self, spec: CollectionSpec, key: tuple[str, float], settled: bool = False
    ) -> Calibration | None:
        """Re-measures when the collection grew, shrank, aged, or Milvus now searches some of it with other
        segments or indexes, once its rows hold still (or `settled`)."""
        if self.slo is not None:
            await self.slo.wait_for_quiet(CALIBRATION_MAX_DEFER_SECONDS)
        rows, seen = await self.store.row_count(spec.name), self._rows_seen.get(key)
        self._rows_seen[key] = rows
        current = self._calibrations.get(key)
        if current is not None:
            state = await self.store.index_state(spec.name)
            if state is not None and current.index_state is not None and not current.index_state <= state:
                # Some segment it was measured on is no longer searched as it was (an index rebuilt or handed
                # over, segments compacted): the measured effort says nothing about its successor. Until that
                # is measured, searches use the generous default. (Segments only added are covered by the row
                # count below; rows not yet indexed are searched exactly.)
                self._calibrations.pop(key, None)
                log.info("collection %s: the segments or indexes Milvus searches changed since its recall "
                         "calibration; measuring again", spec.name)
            else:
                fresh = time.time() - current.measured_at < CALIBRATION_MAX_AGE_SECONDS
                if fresh and abs(rows - current.rows) <= 0.1 * current.rows:
                    return current

        moved = not settled and seen is not None and abs(rows - seen) > STABLE_CHANGE * max(seen, 1)
        if moved or self.writing(spec.name):
            log.debug("collection %s: rows still arriving (%s -> %d); calibrating once they settle",
                      spec.name, seen, rows)
            return None

        async def search(queries: np.ndarray, k: int, effort: int, overfetch: int = OVERFETCH) -> list[list[str]]:
            return await search_for_calibration(self.store, spec, queries, k, effort, overfetch, self._pool)

        with metrics.CALIBRATIONS_RUNNING.track_inprogress(), metrics.CALIBRATION_SECONDS.time():
            return await calibrate(self.store, spec, key[1], search, self._pool)

    def _done(self, key: tuple[str, float], future: asyncio.Future[Calibration | None]) -> None:
        self._running.pop(key, None)
        if future.cancelled():
            return
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
