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

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import _native
from .config import QUANTIZED_INDEXES
from .served_index import IndexState
from .store import CollectionSpec, Store

log = logging.getLogger(__name__)

CALIBRATION_KS = (10, 100)
SAMPLE_QUERIES = 64
# Up to this many rows the reference is exact (every row read once); above, the reference is the
# index searched at its highest effort (exact for IVF, near-exact for HNSW) and says so.
EXACT_REFERENCE_MAX_ROWS = 200_000
PAGE_ROWS = 10_000
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


def _top(vectors: np.ndarray, rows: np.ndarray, k: int, metric: str) -> np.ndarray:
    order = np.broadcast_to(np.arange(len(rows), dtype=np.int64), (len(vectors), len(rows)))
    top, _ = _native.rerank(vectors, rows, np.ascontiguousarray(order), k, "l2" if metric == "l2" else "ip")
    return top


def exact_reference(store: Store, spec: CollectionSpec, queries: np.ndarray, k: int) -> list[list[str]]:
    """The true top k of each query, ranked, from every stored row, in pages through the native core."""
    kept: list[list[tuple[str, np.ndarray]]] = [[] for _ in queries]
    for ids, vectors, _ in store.scan(spec.name, batch_size=PAGE_ROWS):
        top = _top(queries, vectors, min(k, len(ids)), spec.metric)
        for q, row_list in enumerate(top):
            kept[q].extend((ids[r], vectors[r]) for r in row_list if r >= 0)
    ranked = []
    for q, candidates in enumerate(kept):
        ids = [i for i, _ in candidates]
        top = _top(queries[q : q + 1], np.stack([v for _, v in candidates]), min(k, len(ids)), spec.metric)[0]
        ranked.append([ids[r] for r in top if r >= 0])
    return ranked


def midpoints(
    store: Store, spec: CollectionSpec, ids: list[str], rows: np.ndarray,
    search: Callable[[np.ndarray, int, int], list[list[str]]], effort: int,
) -> tuple[np.ndarray, list[set[str]]]:
    """New query points that lie among the data: halfway between each row and its nearest other row, with
    the two rows each was made from.

    A point drawn from each dimension's spread is a pessimistic query on real data: it lies between the
    clusters, far from every photo (20,000 clustered rows: recall 0.99 only at ef 512, while new points of
    the same clusters got 1.0 at 64). Midpoints of neighbours stand where new photos and means of similar
    samples do.
    """
    found = search(rows, 2, effort)
    nearest = [next((hit for hit in hits if hit != own), None) for own, hits in zip(ids, found, strict=True)]
    vectors = store.get(spec.name, [n for n in nearest if n is not None], True, False)
    made = [(row, own, n) for row, own, n in zip(rows, ids, nearest, strict=True) if n in vectors]
    points = np.asarray([(row + vectors[n][0]) / 2 for row, _, n in made], dtype=np.float32)
    return points.reshape(len(made), rows.shape[1]), [{own, n} for _, own, n in made]


def _without(ranked: list[list[str]], excluded: list[set[str]], k: int) -> list[list[str]]:
    """Each ranking without the rows its query was made from, cut to k."""
    return [[i for i in ids if i not in made_from][:k] for ids, made_from in zip(ranked, excluded, strict=True)]


def calibrate(
    store: Store,
    spec: CollectionSpec,
    target: float,
    search: Callable[..., list[list[str]]],
) -> Calibration | None:
    """Measures the least effort per k reaching `target`; None when the collection is too small to matter.

    `search(queries, k, effort, overfetch)` runs lookalike's own search path (over-fetch and exact re-rank)
    and returns the ranked ids of the top k per query. A quantized index that misses the target at every
    effort is measured again with a wider over-fetch (OVERFETCH_STEPS), at its highest effort first.
    """
    rows = store.row_count(spec.name)
    if rows < MIN_ROWS or spec.index_type == "FLAT":
        return None
    started = time.monotonic()
    index_state = store.wait_for_index(spec.name)
    if index_state is None:
        # Rows not yet served by their index are searched another way (exactly, or through a server's interim
        # index), so what would be measured now is not the index: measured again at the next check.
        return None
    offset = random.Random(rows).randrange(0, max(1, rows - SAMPLE_QUERIES))
    efforts = _efforts(spec)
    if spec.index_type == "HNSW":
        # ef beyond the row count adds nothing: the graph either reaches a row or it does not.
        lowest = HNSW_EFFORTS[0] if store.engine_is_lite() else HNSW_SERVER_MIN_EFFORT
        efforts = tuple(e for e in efforts if lowest <= e <= max(rows, lowest))
    ids, rows_read = store.page(spec.name, offset, SAMPLE_QUERIES)
    half = len(ids) // 2
    points, parents = midpoints(store, spec, ids[half:], rows_read[half:], search, efforts[-1])
    queries = np.concatenate([rows_read[:half], points])
    excluded = [{own} for own in ids[:half]] + parents
    # Each is searched for k + spare and scored on the first k of the rest.
    spare = max(len(made_from) for made_from in excluded)
    exact = rows <= EXACT_REFERENCE_MAX_ROWS
    top_k = max(CALIBRATION_KS)
    steps = OVERFETCH_STEPS if spec.index_type in QUANTIZED_INDEXES else OVERFETCH_STEPS[:1]
    reference = _without(
        exact_reference(store, spec, queries, top_k + spare) if exact
        else search(queries, top_k + spare, efforts[-1], steps[-1]),
        excluded, top_k,
    )
    chosen: dict[int, int] = {}
    recalls: dict[int, float] = {}
    overfetch: dict[int, int] = {}

    def measure(k: int, effort: int, factor: int, truth: list[set[str]]) -> float:
        found = _without(search(queries, k + spare, effort, factor), excluded, k)
        recall = float(np.mean([len(set(f) & t) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]))
        chosen[k], recalls[k], overfetch[k] = effort, recall, factor
        return recall

    for k in CALIBRATION_KS:
        truth = [set(ranked[:k]) for ranked in reference]
        for n, factor in enumerate(steps):
            # A wider list is tried at the highest effort first: only if it reaches the target there is the
            # least effort looked for (each wide search moves many vectors).
            if n > 0 and measure(k, efforts[-1], factor, truth) < target:
                continue
            for effort in efforts:
                if measure(k, effort, factor, truth) >= target:
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
    rows_after = store.row_count(spec.name)
    if abs(rows_after - rows) > STABLE_CHANGE * rows:
        log.info("calibration of %s discarded: its rows went from %d to %d while it was measured; "
                 "it is measured again once they settle", spec.name, rows, rows_after)
        return None
    if store.index_state(spec.name) != index_state:
        log.info("calibration of %s discarded: Milvus changed the segments or indexes that answer its searches "
                 "while it was measured; it is measured again at the next check", spec.name)
        return None
    fallback = any(recall < target for recall in recalls.values()) and rows <= EXACT_FALLBACK_MAX_ROWS
    return Calibration(target, rows, chosen, recalls, exact, time.time(), fallback, overfetch, index_state)
