"""Unit tests for the native core (lookalike_server._native), with numpy as the oracle."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lookalike_server import _native

# --------------------------------------------------------------------------------------------------
# normalize_rows


def _normalized(x: np.ndarray) -> np.ndarray:
    """What normalize_rows should produce, computed in float64; zero rows stay zero."""
    wide = x.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    return np.divide(wide, norms, out=np.zeros_like(wide), where=norms > 0)


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 7), (5, 16), (33, 100), (200, 1280), (3000, 300), (2, 100_003)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_normalize_rows_matches_numpy(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32) * 3
    expected = _normalized(x)
    _native.normalize_rows(x)
    np.testing.assert_allclose(x, expected, rtol=2e-6, atol=2e-7)
    np.testing.assert_allclose(np.linalg.norm(x.astype(np.float64), axis=1), 1.0, rtol=2e-6)


def test_normalize_rows_in_place_returns_none_and_keeps_zero_rows() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    x[[0, 3, 5]] = 0.0
    buffer = x.__array_interface__["data"][0]
    expected = _normalized(x)
    assert _native.normalize_rows(x) is None
    assert x.__array_interface__["data"][0] == buffer
    np.testing.assert_array_equal(x[[0, 3, 5]], 0.0)
    assert not np.isnan(x).any()
    np.testing.assert_allclose(x, expected, rtol=2e-6, atol=2e-7)


def test_normalize_rows_writes_through_a_contiguous_view() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((10, 32)).astype(np.float32)
    expected = base.copy()
    expected[2:6] = _normalized(expected[2:6])
    _native.normalize_rows(base[2:6])  # a C-contiguous block of rows
    np.testing.assert_allclose(base, expected, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e20, 3e37], ids=["1e-30", "1e-20", "1e20", "3e37"])
def test_normalize_rows_survives_float_overflow_and_underflow(scale: float) -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 64)) * scale).astype(np.float32)
    expected = _normalized(x)
    _native.normalize_rows(x)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-7)


def test_normalize_rows_does_not_crash_on_nan_or_inf() -> None:
    x = np.ones((3, 20), dtype=np.float32)
    x[0, 4] = np.nan
    x[1, 7] = np.inf
    _native.normalize_rows(x)
    np.testing.assert_allclose(x[2], 1 / np.sqrt(20), rtol=1e-6)


def test_normalize_rows_accepts_empty_arrays() -> None:
    for shape in [(0, 8), (4, 0)]:
        x = np.empty(shape, dtype=np.float32)
        _native.normalize_rows(x)
        assert x.shape == shape


@pytest.mark.parametrize(
    "make",
    [lambda x: x[:, ::2], lambda x: x.T, lambda x: x[::2], lambda x: np.asfortranarray(x)],
    ids=["strided-columns", "transposed", "strided-rows", "fortran"],
)
def test_normalize_rows_rejects_non_contiguous_input(make) -> None:
    x = make(np.arange(1, 61, dtype=np.float32).reshape(6, 10))
    before = x.copy()
    with pytest.raises(ValueError, match="C-contiguous and writable"):
        _native.normalize_rows(x)
    np.testing.assert_array_equal(x, before)


def test_normalize_rows_rejects_read_only_input() -> None:
    x = np.ones((3, 4), dtype=np.float32)
    x.flags.writeable = False
    with pytest.raises(ValueError, match=r"C-contiguous and writable.*read-only"):
        _native.normalize_rows(x)
    np.testing.assert_array_equal(x, 1.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_normalize_rows_rejects_other_dtypes(dtype) -> None:
    x = np.ones((3, 4), dtype=dtype)
    with pytest.raises(TypeError, match=rf"float32, got {np.dtype(dtype).name}"):
        _native.normalize_rows(x)
    np.testing.assert_array_equal(x, 1)


def test_normalize_rows_rejects_non_arrays() -> None:
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        _native.normalize_rows([[1.0, 2.0]])


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()], ids=["1-D", "3-D", "0-D"])
def test_normalize_rows_rejects_wrong_ndim(shape: tuple[int, ...]) -> None:
    x = np.ones(shape, dtype=np.float32)
    with pytest.raises(ValueError, match=r"x must be 2-D \(rows, dim\), got shape \("):
        _native.normalize_rows(x)


# --------------------------------------------------------------------------------------------------
# rerank


def _oracle(
    queries: np.ndarray,
    candidates: np.ndarray,
    rows: np.ndarray,
    k: int,
    metric: str = "ip",
    reverse: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k per query in float64: best first (worst first if reverse), ties by smaller row."""
    out_rows = np.full((len(queries), k), -1, dtype=np.int64)
    out_scores = np.full((len(queries), k), np.nan, dtype=np.float64)
    for q, listed in enumerate(rows):
        valid = np.unique(listed[listed >= 0])
        cand = candidates[valid].astype(np.float64)
        query = queries[q].astype(np.float64)
        scores = cand @ query if metric == "ip" else ((cand - query) ** 2).sum(axis=1)
        key = scores if metric == "ip" else -scores  # higher is better
        if reverse:
            key = -key
        order = np.lexsort((valid, -key))[:k]
        out_rows[q, : len(order)] = valid[order]
        out_scores[q, : len(order)] = scores[order]
    return out_rows, out_scores


def _integer_problem(
    seed: int, q: int, n: int, c: int, d: int, pad: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small-integer vectors, so every float32 score is exact and ties are common."""
    rng = np.random.default_rng(seed)
    queries = rng.integers(-3, 4, size=(q, d)).astype(np.float32)
    candidates = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    rows = rng.integers(0, n, size=(q, c))
    rows[rng.random((q, c)) < pad] = -1
    return queries, candidates, rows


# (Q, N, C): N <= 2*Q*C runs the candidate-major path, larger N or Q == 1 the query-major one;
# (150, 12, 10) lists each candidate row for more queries than the kernel scores in one batch (64).
SHAPES = [(5, 30, 12), (3, 500, 10), (1, 50, 20), (16, 300, 256), (150, 12, 10)]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("reverse", [False, True], ids=["best-first", "worst-first"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "Q{}-N{}-C{}".format(*s))
def test_rerank_matches_numpy_exactly(metric: str, reverse: bool, shape: tuple[int, int, int]) -> None:
    q, n, c = shape
    queries, candidates, rows = _integer_problem(q * n + c, q, n, c, d=37)
    k = 7
    got_rows, got_scores = _native.rerank(queries, candidates, rows, k, metric=metric, reverse=reverse)
    want_rows, want_scores = _oracle(queries, candidates, rows, k, metric, reverse)
    assert got_rows.dtype == np.int64
    assert got_scores.dtype == np.float32
    assert got_rows.shape == got_scores.shape == (q, k)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_array_equal(got_scores, want_scores.astype(np.float32))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rerank_scores_float_data_like_numpy(metric: str) -> None:
    rng = np.random.default_rng(7)
    queries = rng.standard_normal((8, 1280)).astype(np.float32)
    candidates = rng.standard_normal((900, 1280)).astype(np.float32)
    rows = np.stack([rng.choice(900, 300, replace=False) for _ in range(8)])
    got_rows, got_scores = _native.rerank(queries, candidates, rows, 50, metric=metric)
    want_rows, want_scores = _oracle(queries, candidates, rows, 50, metric)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-3)
    # Each returned score belongs to its returned row, and the ranking is monotone.
    wide_q = queries.astype(np.float64)[:, None, :]
    picked = candidates.astype(np.float64)[got_rows]
    own = (picked * wide_q).sum(-1) if metric == "ip" else ((picked - wide_q) ** 2).sum(-1)
    np.testing.assert_allclose(got_scores, own, rtol=1e-4, atol=1e-3)
    steps = np.diff(got_scores, axis=1)
    assert (steps <= 0).all() if metric == "ip" else (steps >= 0).all()
    # Gaussian scores have no near-ties at this size, so the rows agree too.
    np.testing.assert_array_equal(got_rows, want_rows)


def test_rerank_pads_the_tail_when_k_exceeds_the_candidates() -> None:
    queries, candidates, _ = _integer_problem(11, 3, 20, 4, d=9)
    rows = np.array([[4, -1, 2, 9], [-1, -1, -1, -1], [0, 1, 2, 3]])
    got_rows, got_scores = _native.rerank(queries, candidates, rows, 6)
    want_rows, _ = _oracle(queries, candidates, rows, 6)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_array_equal(got_rows[0, 3:], -1)
    np.testing.assert_array_equal(got_rows[1], -1)
    np.testing.assert_array_equal(got_rows[2, 4:], -1)
    assert np.isnan(got_scores[0, 3:]).all()
    assert np.isnan(got_scores[1]).all()
    assert np.isnan(got_scores[2, 4:]).all()
    assert not np.isnan(got_scores[0, :3]).any()
    assert not np.isnan(got_scores[2, :4]).any()


def test_rerank_skips_padding() -> None:
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    candidates = np.array([[5.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    rows = np.array([[-1, 1, -1, 2, -1]])
    got_rows, got_scores = _native.rerank(queries, candidates, rows, 3)
    np.testing.assert_array_equal(got_rows, [[2, 1, -1]])  # row 0 (the best) is not listed
    np.testing.assert_array_equal(got_scores[:, :2], [[3.0, 1.0]])


def test_rerank_counts_a_repeated_row_once() -> None:
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    candidates = np.array([[5.0, 1.0], [1.0, 2.0], [3.0, 3.0]], dtype=np.float32)
    rows = np.array([[0, 0, 2, 0, 2], [1, 1, 1, 1, 1]])
    got_rows, got_scores = _native.rerank(queries, candidates, rows, 4)
    np.testing.assert_array_equal(got_rows, [[0, 2, -1, -1], [1, -1, -1, -1]])
    np.testing.assert_array_equal(got_scores[0, :2], [5.0, 3.0])
    np.testing.assert_array_equal(got_scores[1, :1], [2.0])


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("reverse", [False, True], ids=["best-first", "worst-first"])
def test_rerank_breaks_ties_by_smaller_row(metric: str, reverse: bool) -> None:
    queries = np.array([[1.0, 2.0], [0.5, -1.0]], dtype=np.float32)
    # Rows 1, 3, 4, 6 are the same vector, so they tie for every query.
    candidates = np.array(
        [[9.0, 9.0], [1.0, 1.0], [-9.0, -9.0], [1.0, 1.0], [1.0, 1.0], [0.0, 7.0], [1.0, 1.0]],
        dtype=np.float32,
    )
    rows = np.array([[6, 4, 3, 1], [4, 6, 1, 3]])
    got_rows, got_scores = _native.rerank(queries, candidates, rows, 3, metric=metric, reverse=reverse)
    np.testing.assert_array_equal(got_rows, [[1, 3, 4], [1, 3, 4]])
    assert (got_scores[:, 0] == got_scores[:, 1]).all()
    # And mixed with distinct scores, ties stay in row order between the others.
    rows = np.array([[6, 5, 4, 0, 3, 2, 1], [2, 1, 3, 0, 6, 5, 4]])
    got_rows, _ = _native.rerank(queries, candidates, rows, 7, metric=metric, reverse=reverse)
    want_rows, _ = _oracle(queries, candidates, rows, 7, metric, reverse)
    np.testing.assert_array_equal(got_rows, want_rows)


def test_rerank_accepts_non_contiguous_inputs() -> None:
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((6, 48)).astype(np.float32)
    candidates = rng.standard_normal((40, 48)).astype(np.float32)
    rows = rng.integers(-1, 40, size=(6, 15))
    expected = _native.rerank(queries, candidates, rows, 5, metric="l2")

    wide_q = np.zeros((6, 96), dtype=np.float32)
    wide_q[:, ::2] = queries
    wide_rows = np.zeros((12, 15), dtype=np.int64)
    wide_rows[::2] = rows
    odd_inputs = (wide_q[:, ::2], np.asfortranarray(candidates), wide_rows[::2])
    assert not any(a.flags.c_contiguous for a in odd_inputs)
    got = _native.rerank(*odd_inputs, 5, metric="l2")
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])

    frozen = [a.copy() for a in (queries, candidates, rows)]
    for a in frozen:
        a.flags.writeable = False
    got = _native.rerank(*frozen, 5, metric="l2")
    np.testing.assert_array_equal(got[0], expected[0])


def _big_float_problem(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Large enough (Q*C*D >= 2**20) that rerank really runs on several threads."""
    rng = np.random.default_rng(9)
    queries = rng.standard_normal((24, 384)).astype(np.float32)
    candidates = rng.standard_normal((n, 384)).astype(np.float32)
    rows = rng.integers(-1, min(n, 1500), size=(24, 200))
    return queries, candidates, rows


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rerank_is_identical_for_any_thread_count(metric: str) -> None:
    queries, candidates, rows = _big_float_problem(1500)
    one = _native.rerank(queries, candidates, rows, 40, metric=metric, threads=1)
    for threads in (2, 4, 0):
        many = _native.rerank(queries, candidates, rows, 40, metric=metric, threads=threads)
        np.testing.assert_array_equal(many[0], one[0])
        np.testing.assert_array_equal(many[1], one[1])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_rerank_gives_the_same_bits_whichever_path_runs(metric: str) -> None:
    # Extra rows nobody lists do not change the answer, but push N past 2*Q*C (query-major path).
    queries, candidates, rows = _big_float_problem(1500)
    padded = np.concatenate([candidates, np.ones((2 * 24 * 200, 384), dtype=np.float32)])
    a = _native.rerank(queries, candidates, rows, 40, metric=metric)
    b = _native.rerank(queries, padded, rows, 40, metric=metric)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    _, want_scores = _oracle(queries, candidates, rows, 40, metric)
    np.testing.assert_allclose(a[1], want_scores, rtol=1e-4, atol=1e-3)


def test_rerank_is_safe_to_call_from_several_python_threads() -> None:
    queries, candidates, rows = _big_float_problem(1500)
    expected = _native.rerank(queries, candidates, rows, 40, threads=2)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: _native.rerank(queries, candidates, rows, 40, threads=2), range(8)))
    for got in results:
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_rerank_handles_empty_inputs() -> None:
    got_rows, got_scores = _native.rerank(
        np.empty((0, 4), np.float32), np.ones((3, 4), np.float32), np.empty((0, 5), np.int64), 2
    )
    assert got_rows.shape == got_scores.shape == (0, 2)
    got_rows, got_scores = _native.rerank(
        np.ones((2, 4), np.float32), np.empty((0, 4), np.float32), np.full((2, 3), -1), 2
    )
    np.testing.assert_array_equal(got_rows, -1)
    assert np.isnan(got_scores).all()


def test_rerank_does_not_crash_on_nan_scores() -> None:
    queries = np.array([[1.0, np.inf]], dtype=np.float32)
    candidates = np.array([[1.0, 0.0], [1.0, -1.0], [2.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    got_rows, _ = _native.rerank(queries, candidates, np.array([[0, 1, 2, 3]]), 4)
    assert sorted(got_rows[0].tolist()) == [0, 1, 2, 3]


def _valid_args() -> dict:
    return {
        "queries": np.ones((2, 3), np.float32),
        "candidates": np.ones((4, 3), np.float32),
        "candidate_rows": np.zeros((2, 5), np.int64),
        "k": 2,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"queries": np.ones((2, 3), np.float64)}, "queries must have dtype float32, got float64"),
        ({"candidates": np.ones((4, 3), np.float16)}, "candidates must have dtype float32, got float16"),
        ({"candidate_rows": np.zeros((2, 5), np.int32)}, "candidate_rows must have dtype int64, got int32"),
        ({"candidate_rows": np.zeros((2, 5), np.float32)}, "candidate_rows must have dtype int64, got float32"),
        ({"queries": [[1.0, 2.0, 3.0]]}, "queries must be a numpy.ndarray of float32, got list"),
    ],
)
def test_rerank_rejects_wrong_dtypes(change: dict, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        _native.rerank(**{**_valid_args(), **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"queries": np.ones(3, np.float32)}, r"queries must be 2-D \(Q, D\), got shape \(3,\)"),
        ({"candidates": np.ones((1, 4, 3), np.float32)}, r"candidates must be 2-D \(N, D\), got shape \(1, 4, 3\)"),
        ({"candidate_rows": np.zeros(5, np.int64)}, r"candidate_rows must be 2-D \(Q, C\), got shape \(5,\)"),
        ({"candidates": np.ones((4, 5), np.float32)}, r"D = 3 .*got shape \(4, 5\)"),
        ({"candidate_rows": np.zeros((3, 5), np.int64)}, r"Q = 2, got shape \(3, 5\)"),
        ({"k": 0}, "k must be positive, got 0"),
        ({"k": -3}, "k must be positive, got -3"),
        ({"metric": "cosine"}, "metric must be 'ip' or 'l2', got 'cosine'"),
        ({"threads": -1}, "threads must be >= 0"),
    ],
)
def test_rerank_rejects_wrong_shapes_and_values(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _native.rerank(**{**_valid_args(), **change})


@pytest.mark.parametrize("bad", [4, 99, -2])
def test_rerank_rejects_out_of_range_rows(bad: int) -> None:
    rows = np.array([[0, 1, -1, 3, 2], [3, 2, 1, bad, 0]])
    with pytest.raises(ValueError, match=rf"candidate_rows\[1, 3\] = {bad} .*\[0, 4\)"):
        _native.rerank(**{**_valid_args(), "candidate_rows": rows})


# --------------------------------------------------------------------------------------------------
# top_k_shared


def _every_row(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The candidate_rows that list every candidate for every query, as rerank takes them."""
    return np.ascontiguousarray(np.broadcast_to(np.arange(len(candidates)), (len(queries), len(candidates))))


# (Q, N, D): one query; a short last panel of queries and tile of candidates; N below k; several
# candidate blocks; dims that are no multiple of a vector.
SHARED_SHAPES = [(1, 50, 37), (7, 31, 16), (5, 4, 9), (13, 3000, 33), (10, 400, 300), (2, 1, 1)]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("reverse", [False, True], ids=["best-first", "worst-first"])
@pytest.mark.parametrize("shape", SHARED_SHAPES, ids=lambda s: "Q{}-N{}-D{}".format(*s))
def test_top_k_shared_matches_numpy_exactly(metric: str, reverse: bool, shape: tuple[int, int, int]) -> None:
    q, n, d = shape
    rng = np.random.default_rng(q * n + d)
    queries = rng.integers(-3, 4, size=(q, d)).astype(np.float32)  # exact scores, many ties
    candidates = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    k = 7
    got_rows, got_scores = _native.top_k_shared(queries, candidates, k, metric=metric, reverse=reverse)
    want_rows, want_scores = _oracle(queries, candidates, _every_row(queries, candidates), k, metric, reverse)
    assert got_rows.dtype == np.int64
    assert got_scores.dtype == np.float32
    assert got_rows.shape == got_scores.shape == (q, k)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_array_equal(got_scores, want_scores.astype(np.float32))


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("reverse", [False, True], ids=["best-first", "worst-first"])
@pytest.mark.parametrize("shape", [(8, 900, 1280, 50), (33, 2000, 100, 100), (3, 500, 1283, 600)],
                         ids=lambda s: "Q{}-N{}-D{}-k{}".format(*s))
def test_top_k_shared_agrees_with_rerank(metric: str, reverse: bool, shape: tuple[int, int, int, int]) -> None:
    # The kernel that replaces rerank with every row listed keeps its rows; a score is one sequential sum
    # over the dimensions where rerank sums in vector lanes, so only the last bits may differ.
    q, n, d, k = shape
    rng = np.random.default_rng(n + d)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    candidates = rng.standard_normal((n, d)).astype(np.float32)
    got = _native.top_k_shared(queries, candidates, k, metric=metric, reverse=reverse)
    want = _native.rerank(queries, candidates, _every_row(queries, candidates), k, metric=metric, reverse=reverse)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-3, equal_nan=True)
    # Rows agree but where two l2 distances (about 2 D here) lie within a float32 rounding of each other:
    # there either order is right, so each position's rows must score the same in float64.
    np.testing.assert_array_equal(got[0] >= 0, want[0] >= 0)
    valid = got[0] >= 0
    exact = [_exact_scores(queries, candidates, rows, metric)[valid] for rows in (got[0], want[0])]
    np.testing.assert_allclose(exact[0], exact[1], rtol=2e-6)
    assert np.mean(got[0] == want[0]) > 0.99


def _exact_scores(queries: np.ndarray, candidates: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """Each query's score (float64) against each of its listed rows (-1 reads row 0; mask it out)."""
    picked = candidates[np.maximum(rows, 0)].astype(np.float64)  # (Q, k, D)
    q = queries.astype(np.float64)[:, None, :]
    return (picked * q).sum(axis=2) if metric == "ip" else ((picked - q) ** 2).sum(axis=2)


# (Q, N, D, k): counts around the tiles (16 or 32 queries per panel, 12 or 16 candidate rows per tile,
# 256 dimensions per slice, about 1 MiB of rows per block): N below one tile, N and Q one past a whole
# tile or panel, dims not a multiple of 16 or of the slice, k = 1, several blocks and chunks.
TILE_SHAPES = [
    (1, 5, 7, 1), (16, 11, 17, 3), (17, 13, 129, 1), (33, 25, 255, 4), (32, 12, 16, 12), (31, 97, 1, 5),
    (40, 1001, 300, 1), (65, 2049, 257, 9),
]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("reverse", [False, True], ids=["best-first", "worst-first"])
@pytest.mark.parametrize("shape", TILE_SHAPES, ids=lambda s: "Q{}-N{}-D{}-k{}".format(*s))
def test_top_k_shared_matches_numpy_around_the_tile_sizes(
    metric: str, reverse: bool, shape: tuple[int, int, int, int]
) -> None:
    q, n, d, k = shape
    rng = np.random.default_rng(q + n + d)
    queries = rng.integers(-3, 4, size=(q, d)).astype(np.float32)  # exact scores, many ties
    candidates = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    want_rows, want_scores = _oracle(queries, candidates, _every_row(queries, candidates), k, metric, reverse)
    for threads in (1, 2):
        got_rows, got_scores = _native.top_k_shared(
            queries, candidates, k, metric=metric, reverse=reverse, threads=threads
        )
        np.testing.assert_array_equal(got_rows, want_rows)
        np.testing.assert_array_equal(got_scores, want_scores.astype(np.float32))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_top_k_shared_scores_do_not_depend_on_the_other_queries(metric: str) -> None:
    # One query alone (the narrow tile), among 16 or 40 (the wide one, other panels): the same bits.
    rng = np.random.default_rng(12)
    queries = rng.standard_normal((40, 1283)).astype(np.float32)
    candidates = rng.standard_normal((1500, 1283)).astype(np.float32)
    together = _native.top_k_shared(queries, candidates, 30, metric=metric)
    for begin, end in ((0, 1), (0, 16), (17, 18), (8, 40)):
        alone = _native.top_k_shared(queries[begin:end], candidates, 30, metric=metric)
        np.testing.assert_array_equal(alone[0], together[0][begin:end])
        np.testing.assert_array_equal(alone[1], together[1][begin:end])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_top_k_shared_scores_float_data_like_numpy(metric: str) -> None:
    rng = np.random.default_rng(17)
    queries = rng.standard_normal((9, 1280)).astype(np.float32)
    candidates = rng.standard_normal((700, 1280)).astype(np.float32)
    got_rows, got_scores = _native.top_k_shared(queries, candidates, 40, metric=metric)
    want_rows, want_scores = _oracle(queries, candidates, _every_row(queries, candidates), 40, metric)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(got_rows, want_rows)  # no near-ties among Gaussian scores at this size
    steps = np.diff(got_scores, axis=1)
    assert (steps <= 0).all() if metric == "ip" else (steps >= 0).all()


def test_top_k_shared_pads_the_tail_when_k_exceeds_the_candidates() -> None:
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    candidates = np.array([[2.0, 1.0], [1.0, 3.0], [3.0, -1.0]], dtype=np.float32)
    got_rows, got_scores = _native.top_k_shared(queries, candidates, 5)
    np.testing.assert_array_equal(got_rows, [[2, 0, 1, -1, -1], [1, 0, 2, -1, -1]])
    np.testing.assert_array_equal(got_scores[:, :3], [[3.0, 2.0, 1.0], [3.0, 1.0, -1.0]])
    assert np.isnan(got_scores[:, 3:]).all()
    # l2 scores are squared distances, smallest first; reverse puts the farthest first.
    got_rows, got_scores = _native.top_k_shared(queries, candidates, 4, metric="l2", reverse=True)
    np.testing.assert_array_equal(got_rows, [[1, 2, 0, -1], [2, 1, 0, -1]])
    np.testing.assert_array_equal(got_scores[:, :3], [[9.0, 5.0, 2.0], [13.0, 5.0, 4.0]])


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("reverse", [False, True], ids=["best-first", "worst-first"])
def test_top_k_shared_breaks_ties_by_smaller_row(metric: str, reverse: bool) -> None:
    queries = np.array([[1.0, 2.0], [0.5, -1.0]], dtype=np.float32)
    # Rows 1, 3, 4, 6 are the same vector, so they tie for every query; many copies of it make the
    # ties straddle the kept list's cut-back and the chunks of a threaded run.
    candidates = np.array(
        [[9.0, 9.0], [1.0, 1.0], [-9.0, -9.0], [1.0, 1.0], [1.0, 1.0], [0.0, 7.0], [1.0, 1.0]],
        dtype=np.float32,
    )
    got_rows, _ = _native.top_k_shared(queries, candidates, 7, metric=metric, reverse=reverse)
    want_rows, _ = _oracle(queries, candidates, _every_row(queries, candidates), 7, metric, reverse)
    np.testing.assert_array_equal(got_rows, want_rows)
    # 3 x 5000 x 80 >= 2**20 multiply-adds: large enough to run threaded.
    many = np.ones((5000, 80), dtype=np.float32)
    many[[17, 4000]] = 9.0
    queries = np.ones((3, 80), dtype=np.float32)
    want_rows, _ = _oracle(queries, many, _every_row(queries, many), 300, metric, reverse)
    for threads in (1, 2, 0):
        got_rows, _ = _native.top_k_shared(queries, many, 300, metric=metric, reverse=reverse, threads=threads)
        np.testing.assert_array_equal(got_rows, want_rows)


def test_top_k_shared_accepts_non_contiguous_and_read_only_inputs() -> None:
    rng = np.random.default_rng(6)
    queries = rng.standard_normal((6, 48)).astype(np.float32)
    candidates = rng.standard_normal((40, 48)).astype(np.float32)
    expected = _native.top_k_shared(queries, candidates, 5, metric="l2")
    wide_q = np.zeros((6, 96), dtype=np.float32)
    wide_q[:, ::2] = queries
    odd_inputs = (wide_q[:, ::2], np.asfortranarray(candidates))
    assert not any(a.flags.c_contiguous for a in odd_inputs)
    got = _native.top_k_shared(*odd_inputs, 5, metric="l2")
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    frozen = [a.copy() for a in (queries, candidates)]
    for a in frozen:
        a.flags.writeable = False
    got = _native.top_k_shared(*frozen, 5, metric="l2")
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("q", [24, 1], ids=["Q24", "Q1"])
def test_top_k_shared_is_identical_for_any_thread_count(metric: str, q: int) -> None:
    # Large enough (Q*N*D >= 2**20) to run threaded: the work splits into query blocks and candidate chunks.
    rng = np.random.default_rng(10)
    queries = rng.standard_normal((q, 384)).astype(np.float32)
    candidates = rng.standard_normal((6000, 384)).astype(np.float32)
    one = _native.top_k_shared(queries, candidates, 40, metric=metric, threads=1)
    for threads in (2, 3, 8, 0):
        many = _native.top_k_shared(queries, candidates, 40, metric=metric, threads=threads)
        np.testing.assert_array_equal(many[0], one[0])
        np.testing.assert_array_equal(many[1], one[1])
    want = _native.rerank(queries, candidates, _every_row(queries, candidates), 40, metric=metric)
    np.testing.assert_array_equal(one[0], want[0])


def test_top_k_shared_is_safe_to_call_from_several_python_threads() -> None:
    rng = np.random.default_rng(11)
    queries = rng.standard_normal((16, 256)).astype(np.float32)
    candidates = rng.standard_normal((3000, 256)).astype(np.float32)
    expected = _native.top_k_shared(queries, candidates, 30, threads=2)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: _native.top_k_shared(queries, candidates, 30, threads=2), range(8)))
    for got in results:
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_top_k_shared_handles_empty_inputs() -> None:
    got_rows, got_scores = _native.top_k_shared(np.empty((0, 4), np.float32), np.ones((3, 4), np.float32), 2)
    assert got_rows.shape == got_scores.shape == (0, 2)
    got_rows, got_scores = _native.top_k_shared(np.ones((2, 4), np.float32), np.empty((0, 4), np.float32), 2)
    np.testing.assert_array_equal(got_rows, -1)
    assert np.isnan(got_scores).all()
    got_rows, got_scores = _native.top_k_shared(np.ones((2, 0), np.float32), np.ones((3, 0), np.float32), 2)
    np.testing.assert_array_equal(got_rows, [[0, 1], [0, 1]])  # every score is 0: ties by row
    np.testing.assert_array_equal(got_scores, 0.0)


def test_top_k_shared_does_not_crash_on_nan_scores() -> None:
    queries = np.array([[1.0, np.inf], [np.nan, 1.0]], dtype=np.float32)
    candidates = np.array([[1.0, 0.0], [1.0, -1.0], [2.0, 1.0], [0.0, 0.0]] * 200, dtype=np.float32)
    got_rows, _ = _native.top_k_shared(queries, candidates, 300)
    for row in got_rows:
        assert len(set(row.tolist())) == 300
        assert ((row >= 0) & (row < 800)).all()


def _shared_args() -> dict:
    return {"queries": np.ones((2, 3), np.float32), "candidates": np.ones((4, 3), np.float32), "k": 2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"queries": np.ones((2, 3), np.float64)}, "queries must have dtype float32, got float64"),
        ({"candidates": np.ones((4, 3), np.float16)}, "candidates must have dtype float32, got float16"),
        ({"candidates": np.ones((4, 3), np.int64)}, "candidates must have dtype float32, got int64"),
        ({"queries": [[1.0, 2.0, 3.0]]}, "queries must be a numpy.ndarray of float32, got list"),
    ],
)
def test_top_k_shared_rejects_wrong_dtypes(change: dict, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        _native.top_k_shared(**{**_shared_args(), **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"queries": np.ones(3, np.float32)}, r"queries must be 2-D \(Q, D\), got shape \(3,\)"),
        ({"candidates": np.ones((1, 4, 3), np.float32)}, r"candidates must be 2-D \(N, D\), got shape \(1, 4, 3\)"),
        ({"candidates": np.ones((4, 5), np.float32)}, r"D = 3 columns like queries \(2, 3\), got shape \(4, 5\)"),
        ({"k": 0}, "k must be positive, got 0"),
        ({"k": -3}, "k must be positive, got -3"),
        ({"metric": "cosine"}, "metric must be 'ip' or 'l2', got 'cosine'"),
        ({"threads": -1}, "threads must be >= 0"),
    ],
)
def test_top_k_shared_rejects_wrong_shapes_and_values(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _native.top_k_shared(**{**_shared_args(), **change})


# --------------------------------------------------------------------------------------------------
# pixels_to_tensor


def _table() -> np.ndarray:
    values = np.arange(256, dtype=np.float32)[None, :]
    mean = np.array([123.7, 116.3, 103.5], dtype=np.float32)[:, None]
    std = np.array([58.4, 57.1, 57.4], dtype=np.float32)[:, None]
    return (values - mean) / std


@pytest.mark.parametrize("shape", [(1, 1), (224, 224), (7, 300), (301, 5)], ids=lambda s: "x".join(map(str, s)))
def test_pixels_to_tensor_is_the_tables_lookup_per_channel(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    table = _table()
    out = np.full((3, *shape), np.nan, dtype=np.float32)
    _native.pixels_to_tensor(pixels, table, out)
    expected = np.stack([table[c][pixels[:, :, c]] for c in range(3)])
    np.testing.assert_array_equal(out, expected)


def test_pixels_to_tensor_reads_strided_pixels_and_writes_a_batch_row() -> None:
    rng = np.random.default_rng(7)
    wide = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)
    pixels = wide[:, ::2]  # not contiguous
    batch = np.zeros((2, 3, 20, 20), dtype=np.float32)
    _native.pixels_to_tensor(pixels, _table(), batch[1])
    expected = np.stack([_table()[c][pixels[:, :, c]] for c in range(3)])
    np.testing.assert_array_equal(batch[1], expected)
    assert not batch[0].any()  # the neighbouring row is untouched


@pytest.mark.parametrize(
    ("pixels", "table", "out", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), _table(), np.zeros((3, 4, 4), np.float32), "pixels must have dtype uint8"),
        (np.zeros((4, 4, 4), np.uint8), _table(), np.zeros((3, 4, 4), np.float32), r"\(height, width, 3\) RGB"),
        (np.zeros((4, 4), np.uint8), _table(), np.zeros((3, 4, 4), np.float32), "pixels must be 3-D"),
        (np.zeros((4, 4, 3), np.uint8), _table()[:, :255], np.zeros((3, 4, 4), np.float32),
         r"table must be \(3, 256\)"),
        (np.zeros((4, 4, 3), np.uint8), _table(), np.zeros((3, 4, 5), np.float32), r"out must be \(3, 4, 4\)"),
        (np.zeros((4, 4, 3), np.uint8), _table(), np.zeros((3, 4, 8), np.float32)[:, :, ::2], "C-contiguous"),
    ],
    ids=["float-pixels", "four-channels", "2d-pixels", "short-table", "wrong-out-shape", "strided-out"],
)
def test_pixels_to_tensor_rejects_bad_arrays_clearly(pixels, table, out, message) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        _native.pixels_to_tensor(pixels, table, out)


@pytest.mark.parametrize("reverse", [False, True], ids=["best-first", "worst-first"])
@pytest.mark.parametrize("threads", [1, 2])
def test_top_k_shared_is_exact_among_near_ties(reverse: bool, threads: int) -> None:
    # Every score is an exact integer in float32 (15 terms below 2^20: every partial sum stays below
    # 2^24, in any order), and hundreds of candidates tie or sit a few units apart: any kernel that
    # ranks on a cheaper approximation (bfloat16, |q|^2 + |c|^2 - 2 q.c) and bounds it must still
    # return exactly these rows.
    rng = np.random.default_rng(21)
    queries = rng.integers(-1, 2, size=(12, 15)).astype(np.float32)
    base = rng.integers(2**19, 2**20 - 4, size=15)
    candidates = (base + rng.integers(-3, 4, size=(3000, 15))).astype(np.float32)
    want_rows, want_scores = _oracle(queries, candidates, _every_row(queries, candidates), 20, "ip", reverse)
    got_rows, got_scores = _native.top_k_shared(queries, candidates, 20, reverse=reverse, threads=threads)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_array_equal(got_scores, want_scores.astype(np.float32))


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("scale", [2.0**-70, 1.0, 2.0**55], ids=["tiny", "unit", "huge"])
def test_top_k_shared_agrees_with_rerank_at_any_scale(metric: str, scale: float) -> None:
    # Tiny values give products below float's normal range (2^-126), huge ones squares near its top;
    # some rows are near-copies of others, so their scores nearly tie.
    rng = np.random.default_rng(22)
    queries = (rng.standard_normal((20, 200)) * scale).astype(np.float32)
    candidates = rng.standard_normal((1500, 200))
    candidates[700:] = candidates[:800] + 1e-4 * rng.standard_normal((800, 200))
    candidates = (candidates * scale).astype(np.float32)
    got = _native.top_k_shared(queries, candidates, 50, metric=metric)
    want = _native.rerank(queries, candidates, _every_row(queries, candidates), 50, metric=metric)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=0)
    exact = [_exact_scores(queries, candidates, rows, metric) for rows in (got[0], want[0])]
    np.testing.assert_allclose(exact[0], exact[1], rtol=2e-6)

