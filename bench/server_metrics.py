"""A server's Prometheus metrics over a phase of a bench: scrape before and after, and summarise what the
histograms saw in between (calls, mean, approximate p50/p99 from the buckets). The same for an embedded Milvus
standalone's own histograms (MILVUS): where a search's time goes inside Milvus."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# Histogram families summarised, and the labels that tell their series apart.
SUMMARISED: dict[str, tuple[str, ...]] = {
    "lookalike_search_stage_seconds": ("stage",),
    "lookalike_batch_queue_seconds": ("batcher",),
    "lookalike_event_loop_lag_seconds": (),
    "lookalike_milvus_seconds": ("operation",),
    "lookalike_embed_batch_seconds": (),
    "lookalike_request_seconds": ("method",),
}
# Milvus' own (2.3, in milliseconds): a search or query at the proxy, and at the query node its wait for the
# time tick that makes earlier writes visible (tsafe), its task queue, and the scan of growing (not yet
# indexed) and sealed segments.
MILVUS: dict[str, tuple[str, ...]] = {
    "milvus_proxy_sq_latency": ("query_type",),
    "milvus_querynode_sq_wait_tsafe_latency": ("query_type",),
    "milvus_querynode_sq_queue_latency": ("query_type",),
    "milvus_querynode_sq_segment_latency": ("query_type", "segment_state"),
}
MILVUS_UNIT_S = 1e-3


Snapshot = dict[tuple[str, str], dict[str, float]]  # (family, series label) -> {"le=...": n, "sum": s, "count": n}


def _families(port: int) -> Iterator[Metric]:
    """The server's metric families, read from its /metrics endpoint now."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return text_string_to_metric_families(text)


def scrape(port: int, families: dict[str, tuple[str, ...]] = SUMMARISED) -> Snapshot:
    """The summarised histograms' buckets, sums and counts, now."""
    out: Snapshot = {}
    for family in _families(port):
        labels = families.get(family.name)
        if labels is None:
            continue
        for sample in family.samples:
            key = (family.name, ",".join(sample.labels.get(label, "") for label in labels))
            series = out.setdefault(key, {})
            if sample.name.endswith("_bucket"):
                series[f"le={sample.labels['le']}"] = sample.value
            elif sample.name.endswith("_sum"):
                series["sum"] = sample.value
            elif sample.name.endswith("_count"):
                series["count"] = sample.value
    return out


def gauge(port: int, name: str) -> float | None:
    return gauges(port, name)[name]


def gauges(port: int, *names: str) -> dict[str, float | None]:
    """Several unlabelled gauges from one scrape (None: not exported yet)."""
    found: dict[str, float | None] = dict.fromkeys(names)
    for family in _families(port):
        if family.name in found and family.samples:
            found[family.name] = family.samples[0].value
    return found


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


def between(before: Snapshot, after: Snapshot, unit_s: float = 1.0) -> dict[str, dict[str, Any]]:
    """What each histogram series saw between two scrapes: calls, mean/p50/p99 in ms (p50/p99 from buckets);
    `unit_s`, the histograms' unit in seconds."""
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
        short = family.removeprefix("lookalike_") if family.startswith("lookalike_") else family.removeprefix("milvus_")
        name = short.removesuffix("_seconds").removesuffix("_latency") + (f"{{{label}}}" if label else "")
        ms = 1e3 * unit_s
        out[name] = {
            "calls": int(count),
            "mean_ms": round(ms * total / count, 2),
            "p50_ms": round(ms * p50, 2) if p50 is not None else None,
            "p99_ms": round(ms * p99, 2) if p99 is not None else None,
        }
    return out
