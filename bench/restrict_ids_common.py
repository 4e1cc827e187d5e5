"""What restrict_ids.py and its direct-pymilvus alternatives (restrict_ids_alternatives.py) share: the
collection's shape and row ids, the run's deadline, payload size estimates, and measuring one cell (store x id
set size x alternative)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from common import log, percentiles

from lookalike_server.expressions import ids_in

DIM = 1280  # the shipped model's (EfficientNet-Lite0) dimension: vectors go in as they are
COLLECTION = "restrict_bench"
HIGH_EF = 512  # the server's uncalibrated HNSW default (recall.default_effort)


# Row ids


def row_id(i: int) -> str:
    return f"v{i}"


# Time


class Deadline:
    """The whole run's time: cells are skipped (and say so) once less than `reserve_s` is left."""

    def __init__(self, seconds: float, reserve_s: float) -> None:
        self.end = time.monotonic() + seconds
        self.reserve_s = reserve_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def short(self) -> bool:
        return self.left() < self.reserve_s


# Payload sizes (estimates: protobuf framing left out)


def id_filter(ids: Sequence[str]) -> str:
    return ids_in(ids)


def filter_bytes_chunked(ids: Sequence[str], chunk: int) -> int:
    return sum(len(id_filter(ids[i : i + chunk]).encode()) for i in range(0, len(ids), chunk))


def row_bytes(ids: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None) -> int:
    """Ids + float32 vectors (+ metadata JSON) of rows."""
    meta = sum(len(json.dumps(m, separators=(",", ":"))) for m in metadata) if metadata else 0
    return sum(len(i) for i in ids) + len(ids) * DIM * 4 + meta


def hit_bytes(k: int) -> int:
    return k * (8 + 8)  # an id of a few bytes and a float distance per hit


# Measuring


def measure_queries(search: Callable[[np.ndarray], list[str]], queries: np.ndarray, truth: list[list[str]],
                    budget_s: float, allowed: set[str] | None = None) -> dict[str, Any]:
    """One query per call, in order, until all are done or budget_s has passed (at least one). With `allowed`
    (the set), hits outside it are counted: a filter that leaks is wrong whatever its recall."""
    latencies: list[float] = []
    recalls: list[float] = []
    outside = short = 0
    started = time.monotonic()
    for qi, q in enumerate(queries):
        if qi and time.monotonic() - started > budget_s:
            break
        t = time.perf_counter()
        got = search(q)
        latencies.append(time.perf_counter() - t)
        want = truth[qi]
        recalls.append(len(set(got[: len(want)]) & set(want)) / len(want))
        short += len(got) < len(want)
        if allowed is not None:
            outside += sum(g not in allowed for g in got)
    lat = percentiles(latencies)
    out = {"queries": len(latencies), "p50_ms": lat["p50"], "max_ms": lat["max"],
           "first_ms": round(latencies[0] * 1e3, 2), "recall_at_10": round(float(np.mean(recalls)), 4),
           "short_results": short}
    if allowed is not None:
        out["hits_outside_set"] = outside
    return out


def cell(deadline: Deadline, label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One store x size x alternative: its figures, or why there are none (an error, or out of time)."""
    if deadline.short():
        log(f"  {label}: skipped, {deadline.left():.0f} s left")
        return {"skipped": f"out of time ({deadline.left():.0f} s of the run left)"}
    log(f"  {label}")
    started = time.monotonic()
    try:
        out = fn()
    except TimeoutError:
        raise
    except Exception as e:  # lookalike, pymilvus and gRPC raise their own types: record them, go on
        out = {"error": f"{type(e).__name__}: {str(e)[:800]}"}
        log(f"  {label}: {out['error'][:300]}")
    out["cell_seconds"] = round(time.monotonic() - started, 1)
    summary = {k: out[k] for k in ("setup_s", "p50_ms", "teardown_s", "recall_at_10") if k in out}
    log(f"  {label}: {summary}")
    return out
