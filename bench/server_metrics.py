"""A server's Prometheus metrics over a phase of a bench: scrape before and after, and summarise what the
histograms saw in between (calls, mean, approximate p50/p99 from the buckets)."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# Histogram families summarised, and the label that tells their series apart.
SUMMARISED = {
    "lookalike_search_stage_seconds": "stage",
    "lookalike_batch_queue_seconds": "batcher",
    "lookalike_event_loop_lag_seconds": "",
    "lookalike_milvus_seconds": "operation",
    "lookalike_embed_batch_seconds": "",
    "lookalike_request_seconds": "method",
}


Snapshot = dict[tuple[str, str], dict[str, float]]  # (family, series label) -> {"le=...": n, "sum": s, "count": n}


def _families(port: int) -> Iterator[Metric]:
    """The server's metric families, read from its /metrics endpoint now."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return text_string_to_metric_families(text)


def scrape(port: int) -> Snapshot:
    """The summarised histograms' buckets, sums and counts, now."""
    out: Snapshot = {}
    for family in _families(port):
        label = SUMMARISED.get(family.name)
        if label is None:
            continue
        for sample in family.samples:
            key = (family.name, sample.labels.get(label, "") if label else "")
            series = out.setdefault(key, {})
            if sample.name.endswith("_bucket"):
                series[f"le={sample.labels['le']}"] = sample.value
            elif sample.name.endswith("_sum"):
                series["sum"] = sample.value
            elif sample.name.endswith("_count"):
                series["count"] = sample.value
    return out


def gauge(port: int, name: str) -> float | None:
    for family in _families(port):
        if family.name == name and family.samples:
            return family.samples[0].value
    return None


def histogram_count(port: int, name: str) -> float:
    """How many observations a histogram without labels holds (0 before its first)."""
    for family in _families(port):
        if family.name == name:
            return next((s.value for s in family.samples if s.name.endswith("_count")), 0.0)
    return 0.0


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile from cumulative (upper bound, count) buckets, interpolated linearly inside a bucket."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower
            inside = cumulative - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, cumulative
    return lower


def between(before: Snapshot, after: Snapshot) -> dict[str, dict[str, Any]]:
    """What each histogram series saw between two scrapes: calls, mean/p50/p99 in ms (p50/p99 from buckets)."""
    out: dict[str, dict[str, Any]] = {}
    for (family, label), series in sorted(after.items()):
        old = before.get((family, label), {})
        count = series.get("count", 0) - old.get("count", 0)
        if count <= 0:
            continue
        total = series.get("sum", 0) - old.get("sum", 0)
        buckets = sorted(
            (float(key[3:]), value - old.get(key, 0)) for key, value in series.items() if key.startswith("le=")
        )
        p50, p99 = _quantile(buckets, 0.5), _quantile(buckets, 0.99)
        name = family.removeprefix("lookalike_").removesuffix("_seconds") + (f"{{{label}}}" if label else "")
        out[name] = {
            "calls": int(count),
            "mean_ms": round(1e3 * total / count, 2),
            "p50_ms": round(1e3 * p50, 2) if p50 is not None else None,
            "p99_ms": round(1e3 * p99, 2) if p99 is not None else None,
        }
    return out
