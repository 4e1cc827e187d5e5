"""Native kernels vs the fastest numpy we could write for the same arrays; prints one JSON object.

Baseline and native run in the same process on the same arrays, interleaved (alternating which goes
first), and medians are reported. Run: python bench/native.py [--repeats N] [--seed S] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lookalike_server import _native

SETTLE_S = 0.2  # pause before each timed call, longer than OpenBLAS spins after its last call


def _seconds(fn: Callable[[], object], settle: float = 0.0) -> float:
    time.sleep(settle)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(_seconds(fn) for _ in range(repeats))


def _interleaved(native: Callable[[], object], baseline: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of each, measured in alternating order so neither always runs on a warm cache.

    Each call starts after a short pause: OpenBLAS worker threads keep spinning for a while after a
    GEMM, and would otherwise steal a core from whatever is timed next.
    """
    native(), baseline()  # warm-up: page faults, thread pools
    ours, theirs = [], []
    for i in range(repeats):
        if i % 2:
            theirs.append(_seconds(baseline, SETTLE_S))
            ours.append(_seconds(native, SETTLE_S))
        else:
            ours.append(_seconds(native, SETTLE_S))
            theirs.append(_seconds(baseline, SETTLE_S))
    return statistics.median(ours), statistics.median(theirs)


def _fastest(variants: dict[str, Callable[[], object]], repeats: int = 3) -> tuple[str, dict[str, float]]:
    """The quickest numpy variant and every variant's median milliseconds."""
    times = {name: statistics.median(_seconds(fn, SETTLE_S) for _ in range(repeats)) for name, fn in variants.items()}
    return min(times, key=times.__getitem__), {name: round(t * 1e3, 2) for name, t in times.items()}


def memory_bandwidth(mib: int = 512) -> float:
    """GB/s of a large numpy copy, counting bytes read plus bytes written."""
    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    return 2 * src.nbytes / _median(lambda: np.copyto(dst, src), 7) / 1e9


def bench_normalize(rows: int, dim: int, repeats: int, rng: np.random.Generator) -> dict:
    x = rng.standard_normal((rows, dim), dtype=np.float32)

    def linalg_norm() -> None:
        np.divide(x, np.linalg.norm(x, axis=1, keepdims=True), out=x)

    def einsum_divide() -> None:
        np.divide(x, np.sqrt(np.einsum("ij,ij->i", x, x))[:, None], out=x)

    def einsum_multiply() -> None:
        np.multiply(x, (1.0 / np.sqrt(np.einsum("ij,ij->i", x, x)))[:, None], out=x)

    variants = {
        "x /= np.linalg.norm(x, axis=1, keepdims=True)": linalg_norm,
        "x /= np.sqrt(einsum('ij,ij->i', x, x))[:, None]": einsum_divide,
        "x *= 1 / np.sqrt(einsum('ij,ij->i', x, x))[:, None]": einsum_multiply,
    }
    best, variant_ms = _fastest(variants)

    check = rng.standard_normal((64, dim), dtype=np.float32)
    expected = check / np.linalg.norm(check, axis=1, keepdims=True)
    _native.normalize_rows(check)
    np.testing.assert_allclose(check, expected, rtol=1e-5, atol=1e-6)

    ours, theirs = _interleaved(lambda: _native.normalize_rows(x), variants[best], repeats)
    moved = 2 * x.nbytes  # the least traffic possible: read every row once, write it once
    return {
        "shape": [rows, dim],
        "native_ms": round(ours * 1e3, 2),
        "numpy_ms": round(theirs * 1e3, 2),
        "native_vs_numpy": round(theirs / ours, 2),
        "native_gb_s": round(moved / ours / 1e9, 1),
        "numpy_gb_s": round(moved / theirs / 1e9, 1),
        "numpy_code": best,
        "numpy_variants_ms": variant_ms,
        "gb_counted": "rows read once + written once (2 x array bytes)",
    }


def _candidate_lists(
    queries: int, per_query: int, collection: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query candidate ids from a collection, as the store returns them, and the shared matrix's
    row for each: the matrix holds the union of all lists, sorted by id (as the server builds it)."""
    ids = np.stack([rng.choice(collection, per_query, replace=False) for _ in range(queries)])
    union = np.unique(ids)
    return union, np.searchsorted(union, ids)


def bench_rerank(
    queries: int, per_query: int, dim: int, k: int, collection: int, repeats: int, rng: np.random.Generator
) -> dict:
    union, rows = _candidate_lists(queries, per_query, collection, rng)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    cand = rng.standard_normal((len(union), dim), dtype=np.float32)

    def top_k(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        picked = np.take_along_axis(part, order, axis=1)
        return np.take_along_axis(rows, picked, axis=1), np.take_along_axis(top, order, axis=1)

    def per_query_loop() -> tuple[np.ndarray, np.ndarray]:
        scores = np.empty(rows.shape, dtype=np.float32)
        for i in range(queries):
            np.matmul(cand[rows[i]], q[i], out=scores[i])
        return top_k(scores)

    variants = {
        "gather cand[rows] + einsum('qcd,qd->qc') + argpartition": lambda: top_k(
            np.einsum("qcd,qd->qc", cand[rows], q)
        ),
        "gather cand[rows] + batched matmul + argpartition": lambda: top_k(
            np.matmul(cand[rows], q[:, :, None])[..., 0]
        ),
        "per-query gather + matvec + argpartition": per_query_loop,
        "dense q @ cand.T + take_along_axis + argpartition": lambda: top_k(
            np.take_along_axis(q @ cand.T, rows, axis=1)
        ),
    }
    best, variant_ms = _fastest(variants, repeats=2)

    def native() -> tuple[np.ndarray, np.ndarray]:
        return _native.rerank(q, cand, rows, k)

    ours_rows, ours_scores = native()
    theirs_rows, theirs_scores = variants[best]()
    np.testing.assert_allclose(ours_scores, theirs_scores, rtol=1e-4, atol=1e-3)
    rows_match = float(np.mean(ours_rows == theirs_rows))

    ours, theirs = _interleaved(native, variants[best], repeats)
    scored = rows.size * dim * 4  # candidate vectors scored, each read once
    return {
        "queries": queries,
        "candidates_per_query": per_query,
        "dim": dim,
        "k": k,
        "shared_matrix_rows": len(union),
        "native_ms": round(ours * 1e3, 2),
        "numpy_ms": round(theirs * 1e3, 2),
        "native_vs_numpy": round(theirs / ours, 2),
        "native_gb_s": round(scored / ours / 1e9, 1),
        "numpy_gb_s": round(scored / theirs / 1e9, 1),
        "numpy_code": best,
        "numpy_variants_ms": variant_ms,
        "top_k_rows_agree": round(rows_match, 4),
        "gb_counted": "Q x C candidate vectors scored (Q*C*D*4 bytes)",
    }


def bench_top_k_shared(
    queries: int, candidates: int, dim: int, k: int, repeats: int, rng: np.random.Generator, metric: str = "ip"
) -> dict:
    """Every query against the same candidate matrix (calibration's exact reference, large restrict_ids
    sets, the exact fallback): native top_k_shared against numpy's matrix product + argpartition."""
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    cand = rng.standard_normal((candidates, dim), dtype=np.float32)
    cand_norms = np.einsum("ij,ij->i", cand, cand)

    def best_k(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The k largest keys of each row, largest first."""
        part = np.argpartition(keys, candidates - k, axis=1)[:, candidates - k :]
        top = np.take_along_axis(keys, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)

    if metric == "ip":
        variants = {
            "q @ cand.T + argpartition + sort of the k": lambda: best_k(q @ cand.T),
            "np.dot(q, cand.T) + argpartition(-scores) + sort of the k": lambda: _negated_best_k(
                np.dot(q, cand.T), k
            ),
        }
    else:
        # The fastest exact-enough numpy: |c|^2 - 2 q.c (|q|^2 is the same for a query's whole row).
        def expanded() -> tuple[np.ndarray, np.ndarray]:
            rows, neg = best_k(2 * (q @ cand.T) - cand_norms)
            return rows, np.einsum("ij,ij->i", q, q)[:, None] - neg

        variants = {"2 q @ cand.T - |cand|^2 + argpartition + sort of the k (+ |q|^2)": expanded}
    best, variant_ms = _fastest(variants, repeats=3)

    def native() -> tuple[np.ndarray, np.ndarray]:
        return _native.top_k_shared(q, cand, k, metric)

    ours_rows, ours_scores = native()
    theirs_rows, theirs_scores = variants[best]()
    np.testing.assert_allclose(ours_scores, theirs_scores, rtol=1e-4, atol=2e-3)
    rows_match = float(np.mean(ours_rows == theirs_rows))
    # The road the server took before: rerank with every row listed for every query.
    listed = np.ascontiguousarray(np.broadcast_to(np.arange(candidates, dtype=np.int64), (queries, candidates)))
    same = _native.rerank(q, cand, listed, k, metric)
    # The scores agree to the last bits of a float32 sum, so rows swap only where two scores do too.
    np.testing.assert_allclose(ours_scores, same[1], rtol=1e-5, atol=1e-3)
    rows_as_rerank = float(np.mean(same[0] == ours_rows))
    rerank_s = statistics.median(_seconds(lambda: _native.rerank(q, cand, listed, k, metric), SETTLE_S)
                                 for _ in range(3))

    ours, theirs = _interleaved(native, variants[best], repeats)
    scored = queries * candidates * dim * 4
    return {
        "queries": queries,
        "candidates_per_query": candidates,
        "dim": dim,
        "k": k,
        "metric": metric,
        "shared_matrix_rows": candidates,
        "native_code": f"_native.top_k_shared(q, cand, {k}, {metric!r})",
        "native_ms": round(ours * 1e3, 2),
        "numpy_ms": round(theirs * 1e3, 2),
        "native_vs_numpy": round(theirs / ours, 2),
        "native_gb_s": round(scored / ours / 1e9, 1),
        "numpy_gb_s": round(scored / theirs / 1e9, 1),
        "native_gflop_s": round(2 * queries * candidates * dim / ours / 1e9, 1),
        "numpy_code": best,
        "numpy_variants_ms": variant_ms,
        "rerank_with_every_row_listed_ms": round(rerank_s * 1e3, 2),
        "max_abs_score_difference_from_rerank": float(np.max(np.abs(ours_scores - same[1]))),
        "top_k_rows_as_rerank": round(rows_as_rerank, 4),
        "top_k_rows_agree": round(rows_match, 4),
        "gb_counted": "Q x C candidate vectors scored (Q*C*D*4 bytes)",
    }


def _negated_best_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)


def _beside_busy_thread(fn: Callable[[], object], calls: int) -> float:
    """Mean seconds per call of fn while another thread runs pure Python, as a server's busy event loop
    does: every time fn releases the GIL it may wait up to a switch interval (5 ms) to get it back."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    finally:
        stop.set()
        spinner.join()


def bench_pixels_to_tensor(side: int, repeats: int, rng: np.random.Generator) -> dict:
    """An image's pixels to its normalised CHW tensor: native (GIL held) against numpy's per-channel
    lookups (the server's way before; each np.take releases the GIL), alone and beside a busy thread."""
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    values = np.arange(256, dtype=np.float32)[None, :]
    table = (values - np.float32(127.5)) / np.float32(58.0) * np.ones((3, 1), np.float32)
    out = np.empty((3, side, side), dtype=np.float32)

    def native() -> None:
        _native.pixels_to_tensor(pixels, table, out)

    def baseline() -> None:
        for channel in range(3):
            np.take(table[channel], pixels[:, :, channel], out=out[channel])

    native_s, baseline_s = _interleaved(native, baseline, repeats)
    calls = 100
    busy_native = _beside_busy_thread(native, calls)
    busy_baseline = _beside_busy_thread(baseline, calls)
    return {
        "image": f"{side}x{side}",
        "alone_ms": {"native": round(native_s * 1e3, 3), "numpy_take": round(baseline_s * 1e3, 3)},
        "alone_speedup": round(baseline_s / native_s, 2),
        "beside_busy_python_thread_ms": {"native": round(busy_native * 1e3, 3),
                                         "numpy_take": round(busy_baseline * 1e3, 3)},
        "beside_busy_python_thread_speedup": round(busy_baseline / busy_native, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="interleaved timing rounds per kernel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="also save the JSON to bench/results/native.json")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    load_start = os.getloadavg()[0]

    result = {
        "bench": "native",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "numpy": np.__version__,
        },
        "memory_copy_gb_s": round(memory_bandwidth(), 1),
        "pixels_to_tensor": bench_pixels_to_tensor(224, args.repeats, rng),
        "normalize_rows": bench_normalize(20_000, 1280, args.repeats, rng),
        # A batch of unrelated queries: lists barely overlap, the shared matrix is ~Q*C rows.
        "rerank": bench_rerank(64, 2000, 1280, 100, 1_000_000, args.repeats, rng),
        # Every query ranks the same 2000 candidates: numpy's best is one dense GEMM + argpartition.
        "rerank_same_candidates": bench_top_k_shared(64, 2000, 1280, 100, args.repeats, rng),
        "rerank_same_candidates_l2": bench_top_k_shared(64, 2000, 1280, 100, args.repeats, rng, metric="l2"),
    }
    # The machine is shared: the 1-minute load average around the run says how quiet it was.
    result["load_average"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.write:
        (Path(__file__).resolve().parent / "results" / "native.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
