"""Every exact top-k and merge of the server (pipeline/ranking.py), against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike_server.pipeline.ranking import (
    MAX_RESULTS_PER_MILVUS_CALL,
    VECTOR_REPLY_FLOATS,
    best_per_batch,
    exact_top_k,
    fetch_size,
    queries_per_call,
    rank_by_distance,
)
from lookalike_server.store import Candidate, CollectionSpec


def _spec(index_type: str, dimension: int = 8) -> CollectionSpec:
    return CollectionSpec("c", "ip", index_type, "", dimension)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("reverse", [False, True])
def test_exact_top_k_is_numpys_order(metric, reverse):
    rng = np.random.default_rng(3)
    queries = rng.integers(-3, 4, (5, 8)).astype(np.float32)
    rows = rng.integers(-3, 4, (300, 8)).astype(np.float32)
    top, scores = exact_top_k(queries, rows, 10, metric, reverse)
    for q, query in enumerate(queries):
        exact = rows @ query if metric == "ip" else ((rows - query) ** 2).sum(axis=1)
        best_first = -exact if (metric == "ip") != reverse else exact
        expected = np.lexsort((np.arange(len(rows)), best_first))[:10]  # ties by position
        assert top[q].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[q], exact[expected])


def test_exact_top_k_pads_when_there_are_fewer_rows_than_k():
    top, scores = exact_top_k(np.ones((1, 2), np.float32), np.eye(2, dtype=np.float32), 4, "ip")
    assert top[0].tolist()[2:] == [-1, -1] and np.isnan(scores[0][2:]).all()


def test_best_per_batch_keeps_each_querys_best_of_every_batch():
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((100, 4)).astype(np.float32)
    queries = rng.standard_normal((3, 4)).astype(np.float32)
    ids = [f"r{i}" for i in range(100)]
    batches = [(ids[s : s + 30], rows[s : s + 30], [None] * len(ids[s : s + 30])) for s in range(0, 100, 30)]
    kept = best_per_batch(queries, batches, 5, "ip", False)
    for q, query in enumerate(queries):
        best = {ids[i] for i in np.argsort(-(rows @ query))[:5]}
        assert best <= {c.id for c in kept[q]}  # the global best 5 survive the per-batch cut
        assert len(kept[q]) == 5 * 4  # 5 from each of the 4 batches


def test_rank_by_distance_orders_by_milvus_scores_ties_by_id_and_drops_duplicates():
    found = [[Candidate("b", None, None, 0.5), Candidate("a", None, None, 0.5), Candidate("c", None, None, 0.9),
              Candidate("c", None, None, 0.9)]]
    assert [h.id for h in rank_by_distance(found, 3, "ip")[0]] == ["c", "a", "b"]
    assert [h.id for h in rank_by_distance(found, 3, "l2")[0]] == ["a", "b", "c"]
    reversed_hits = rank_by_distance(found, 1, "ip", reverse=True)[0]
    assert reversed_hits[0].id == "c" and reversed_hits[0].score == -0.9


def test_float_indexes_fetch_exactly_k_and_quantized_ones_over_fetch_within_one_reply():
    assert fetch_size(_spec("HNSW"), 10) == 10
    assert fetch_size(_spec("IVF_SQ8"), 10) == 42  # at least k + 32
    assert fetch_size(_spec("IVF_SQ8"), 100, overfetch=8) == 800
    assert fetch_size(_spec("IVF_PQ", 1280), 5000, overfetch=8) == VECTOR_REPLY_FLOATS // 1280


def test_queries_per_call_keep_a_reply_within_milvus_limits():
    assert queries_per_call(10, 1280, False) == MAX_RESULTS_PER_MILVUS_CALL // 10
    assert queries_per_call(100, 1280, True) == (VECTOR_REPLY_FLOATS // 1280) // 100
    assert queries_per_call(16_384, 1280, True) == 1
