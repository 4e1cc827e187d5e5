"""Every exact top-k and merge of the server, in one place: live searches and the recall calibration share it.

Also how many candidates a search asks of Milvus (async_store splits calls to fit Milvus' replies)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import _native
from ..async_store import MAX_RESULTS_PER_MILVUS_CALL, VECTOR_REPLY_FLOATS, queries_per_call
from ..config import MAX_K, QUANTIZED_INDEXES
from ..store import Candidate, CollectionSpec
from .types import Hit

# Quantized indexes are asked for this many candidates per result, then re-ranked exactly, until the recall
# calibration measures how many they need (calibration.OVERFETCH_STEPS).
OVERFETCH = 2
# Re-exported: the reply limits live with the calls they limit (async_store).
__all__ = ["MAX_RESULTS_PER_MILVUS_CALL", "VECTOR_REPLY_FLOATS", "queries_per_call"]


def exact_top_k(
    queries: np.ndarray, rows: np.ndarray, k: int, metric: str, reverse: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k best rows among the same `rows` (positions, -1 padded; scores), ties by position: the
    native blocked kernel, which never writes the queries x rows score matrix (bench/native.py compares it with
    numpy's matmul + argpartition: rerank_same_candidates)."""
    return _native.top_k_shared(queries, rows, k, "l2" if metric == "l2" else "ip", reverse)


class BestPerBatch:
    """Keeps each query's `want` best rows of every batch added; a final re-rank merges them exactly."""

    def __init__(self, vectors: np.ndarray, want: int, metric: str, reverse: bool) -> None:
        self.vectors, self.want, self.metric, self.reverse = vectors, want, metric, reverse
        self.kept: list[list[Candidate]] = [[] for _ in range(len(vectors))]

    def add(self, ids: list[str], batch: np.ndarray, metadata: list[Any]) -> None:
        top, _ = exact_top_k(self.vectors, batch, min(self.want, len(ids)), self.metric, self.reverse)
        for q, row_list in enumerate(top):
            # A copy: a view of the row would keep the whole batch (a scan's page) alive until the end.
            self.kept[q].extend(Candidate(ids[r], batch[r].copy(), metadata[r]) for r in row_list if r >= 0)


def best_per_batch(
    vectors: np.ndarray, batches: Iterable[tuple[list[str], np.ndarray, list[Any]]], want: int, metric: str,
    reverse: bool,
) -> list[list[Candidate]]:
    """BestPerBatch over batches that are all at hand."""
    best = BestPerBatch(vectors, want, metric, reverse)
    for ids, batch, metadata in batches:
        best.add(ids, batch, metadata)
    return best.kept


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


def fetch_size(spec: CollectionSpec, want: int, overfetch: int = OVERFETCH) -> int:
    """Candidates asked of Milvus: exactly k from float indexes, over-fetched from quantized ones for the re-rank.

    A float index (FLAT, HNSW, IVF_FLAT) scores its candidates exactly, so the top k of a larger fetch are the k
    it returns for limit k at the same ef or nprobe: over-fetching there only made pymilvus parse 4x the hits.
    """
    if spec.index_type not in QUANTIZED_INDEXES:
        return want
    # Each candidate comes with its vector: the list stops where one query's reply would grow too large.
    return min(MAX_K, max(overfetch * want, want + 32), max(want, VECTOR_REPLY_FLOATS // spec.dimension))


def ranked_ids(queries: np.ndarray, found: list[list[Candidate]], k: int, spec: CollectionSpec) -> list[list[str]]:
    """The ids of each query's top k from Milvus' candidates, as a live search ranks them."""
    quantized = spec.index_type in QUANTIZED_INDEXES
    ranked = rerank(queries, found, k, spec.metric) if quantized else rank_by_distance(found, k, spec.metric)
    return [[h.id for h in hits] for hits in ranked]
