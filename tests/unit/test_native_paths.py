"""The native core's narrower code paths and its thread pool: each SIMD level this CPU has (capped with
LOOKALIKE_SIMD in a child process, as a CPU without AVX-512 or AVX2 would run it), calls from a forked
child, and the scores that must come back as +0 whatever the sign of the key they were ranked by."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lookalike_server import _native
from tests.unit.test_native import _every_row, _oracle

LEVELS = ["avx512", "avx2", "base"]

# (Q, N, D, k, threads): one query (the narrow tile), a short last panel and tile, dims that are no
# multiple of a vector or of the 256-dimension slice, several candidate blocks and chunks (threads 2),
# k above a chunk's rows, k = 1 (a cut every 32 scores), N below k.
PATH_SHAPES = [
    (1, 300, 37, 5, 1),
    (9, 130, 21, 7, 2),
    (33, 1100, 259, 40, 2),
    (40, 2500, 70, 300, 2),
    (17, 3000, 16, 1, 2),
    (5, 6, 3, 9, 1),
]


def _problem(seed: int, q: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Small-integer vectors: every float32 score is exact in any order of summation, ties are common."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-3, 4, size=(q, d)).astype(np.float32), rng.integers(-3, 4, size=(n, d)).astype(np.float32))


CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from lookalike_server import _native
    from tests.unit.test_native_paths import PATH_SHAPES, _problem

    out = {"simd": _native.simd(), "results": []}
    for seed, (q, n, d, k, threads) in enumerate(PATH_SHAPES):
        queries, candidates = _problem(seed, q, n, d)
        for metric in ("ip", "l2"):
            for reverse in (False, True):
                rows, scores = _native.top_k_shared(queries, candidates, k, metric=metric, reverse=reverse,
                                                    threads=threads)
                out["results"].append({"rows": rows.tolist(), "scores": np.nan_to_num(scores, nan=-1.0).tolist()})
    x = _problem(99, 50, 1, 300)[0] * 0.5
    _native.normalize_rows(x)
    out["normalized"] = x.tolist()
    json.dump(out, sys.stdout)
    """
)


def _run_child(code: str, level: str | None) -> subprocess.CompletedProcess[str]:
    """`code` in a new interpreter that imports this checkout's tests, with LOOKALIKE_SIMD=level (None: unset)."""
    root = Path(__file__).resolve().parents[2]
    env = {name: value for name, value in os.environ.items() if name != "LOOKALIKE_SIMD"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    if level is not None:
        env["LOOKALIKE_SIMD"] = level
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


@pytest.mark.parametrize("level", LEVELS)
def test_every_simd_level_gives_the_exact_top_k(level: str) -> None:
    widest = _run_child("from lookalike_server import _native; print(_native.simd())", None)
    assert widest.returncode == 0, widest.stderr
    done = _run_child(CHILD, level)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    # The cap never raises the level: a CPU without the level runs the widest it has.
    assert got["simd"] == LEVELS[max(LEVELS.index(widest.stdout.strip()), LEVELS.index(level))]
    results = iter(got["results"])
    for seed, (q, n, d, k, _threads) in enumerate(PATH_SHAPES):
        queries, candidates = _problem(seed, q, n, d)
        for metric in ("ip", "l2"):
            for reverse in (False, True):
                want_rows, want_scores = _oracle(queries, candidates, _every_row(queries, candidates), k, metric,
                                                 reverse)
                result = next(results)
                np.testing.assert_array_equal(result["rows"], want_rows)
                np.testing.assert_array_equal(result["scores"], np.nan_to_num(want_scores, nan=-1.0))
    x = _problem(99, 50, 1, 300)[0].astype(np.float64) * 0.5
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    want = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    np.testing.assert_allclose(got["normalized"], want, rtol=1e-5, atol=1e-6)


def test_simd_names_a_known_level() -> None:
    assert _native.simd() in LEVELS


FORK_CHILD = textwrap.dedent(
    """
    import os, sys, time, warnings
    import numpy as np
    from lookalike_server import _native

    warnings.simplefilter("ignore")  # fork() of a process with threads: the point of this test
    rng = np.random.default_rng(3)
    queries = rng.standard_normal((40, 300)).astype(np.float32)
    candidates = rng.standard_normal((3000, 300)).astype(np.float32)
    want = _native.top_k_shared(queries, candidates, 20, threads=2)  # the pool's workers start here
    pid = os.fork()
    if pid == 0:  # the child has none of the parent's workers: its calls must not wait for them
        got = _native.top_k_shared(queries, candidates, 20, threads=2)
        again = _native.rerank(queries, candidates, np.tile(np.arange(3000), (40, 1)), 20, threads=2)
        ok = (got[0] == want[0]).all() and (got[1] == want[1]).all() and (again[0] == want[0]).mean() > 0.99
        os._exit(0 if ok else 3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(os.waitstatus_to_exitcode(status))
        time.sleep(0.05)
    os.kill(pid, 9)
    sys.exit(4)
    """
)


def test_a_forked_child_runs_threaded_kernels() -> None:
    done = subprocess.run([sys.executable, "-c", FORK_CHILD], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, (done.returncode, done.stderr)


def test_threaded_kernels_run_side_by_side() -> None:
    # Several callers at once: one holds the pool, the others start threads of their own; all agree with
    # a lone single-threaded call.
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((70, 200)).astype(np.float32)
    candidates = rng.standard_normal((4000, 200)).astype(np.float32)
    listed = np.tile(np.arange(4000), (70, 1))
    want = _native.top_k_shared(queries, candidates, 25, metric="l2", threads=1)
    want_rerank = _native.rerank(queries, candidates, listed, 25, metric="l2", threads=1)
    rows_to_normalize = rng.standard_normal((3000, 300)).astype(np.float32)  # 3.6 MB: several blocks
    want_normalized = rows_to_normalize.copy()
    _native.normalize_rows(want_normalized)

    def call(i: int) -> tuple[np.ndarray, ...]:
        threads = [0, 2, 3, 8][i % 4]
        x = rows_to_normalize.copy()
        _native.normalize_rows(x)
        return (*_native.top_k_shared(queries, candidates, 25, metric="l2", threads=threads),
                *_native.rerank(queries, candidates, listed, 25, metric="l2", threads=threads), x)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(call, range(24)))
    for rows, scores, rerank_rows, rerank_scores, normalized in results:
        np.testing.assert_array_equal(normalized, want_normalized)
        np.testing.assert_array_equal(rows, want[0])
        np.testing.assert_array_equal(scores, want[1])
        np.testing.assert_array_equal(rerank_rows, want_rerank[0])
        np.testing.assert_array_equal(rerank_scores, want_rerank[1])


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("reverse", [False, True], ids=["best-first", "worst-first"])
def test_top_k_shared_zero_scores_come_back_positive(metric: str, reverse: bool) -> None:
    # Keys are scores negated for l2 or reverse, and a zero key ranks as one value whatever its sign:
    # the scores returned are still the +0 the sums give.
    queries = np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    candidates = np.array([[1.0, 0.0, 2.0], [0.0, 5.0, 0.0], [-2.0, 1.0, 1.0], [0.0, 0.0, 0.0]] * 50, dtype=np.float32)
    rows, scores = _native.top_k_shared(queries, candidates, 200, metric=metric, reverse=reverse)
    want_rows, want_scores = _oracle(queries, candidates, _every_row(queries, candidates), 200, metric, reverse)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(scores, want_scores.astype(np.float32))
    zeros = scores == 0
    assert zeros.any()
    assert not np.signbit(scores[zeros]).any()


def _padded(vectors: list[list[float]], dim: int = 400) -> np.ndarray:
    """The vectors with zeros appended up to `dim`: the same scores, enough work to run threaded."""
    out = np.zeros((len(vectors), dim), dtype=np.float32)
    out[:, :2] = vectors
    return out


def test_top_k_shared_ranks_nan_scores_last() -> None:
    # A NaN score (0 * inf, or NaN input) sorts after every number, best-first or worst-first, and
    # NaNs tie by row: through the merge of the chunks' lists, and through their cut-backs when only a
    # few scores are numbers.
    queries = _padded([[0.0, 2.0], [np.nan, 1.0]])
    candidates = _padded([[1.0, 0.0], [np.inf, 0.0], [2.0, 1.0], [0.0, 0.0], [-1.0, 3.0]] * 300)
    mostly_nan = _padded([[2.0, 1.0] if r % 70 == 0 else [np.inf, 0.0] for r in range(1500)])
    numbers = np.arange(0, 1500, 70)
    for reverse in (False, True):
        for threads in (1, 2):
            rows, scores = _native.top_k_shared(queries, candidates, 1205, reverse=reverse, threads=threads)
            assert not np.isnan(scores[0][:1200]).any() and np.isnan(scores[0][1200:]).all()
            steps = np.diff(scores[0][:1200])
            assert (steps <= 0).all() if not reverse else (steps >= 0).all()
            np.testing.assert_array_equal(rows[0][1200:], [1, 6, 11, 16, 21])  # 0 * inf
            assert np.isnan(scores[1]).all()  # a NaN query scores NaN against every row
            np.testing.assert_array_equal(rows[1], np.arange(1205))

            rows, scores = _native.top_k_shared(queries[:1], mostly_nan, 50, reverse=reverse, threads=threads)
            np.testing.assert_array_equal(rows[0][: len(numbers)], numbers)
            np.testing.assert_array_equal(scores[0][: len(numbers)], 2.0)
            nan_rows = np.setdiff1d(np.arange(1500), numbers)[: 50 - len(numbers)]
            np.testing.assert_array_equal(rows[0][len(numbers) :], nan_rows)
            assert np.isnan(scores[0][len(numbers) :]).all()
