"""Prometheus metrics: one registry of what an operator watches; served by `serve --metrics-port`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS = Counter("lookalike_requests_total", "gRPC calls by method and final status code", ["method", "code"])
REQUEST_SECONDS = Histogram(
    "lookalike_request_seconds", "gRPC call latency by method", ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SIZE = Histogram(
    "lookalike_batch_size", "Items per batch, by batcher", ["batcher"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
QUEUE_DEPTH = Gauge("lookalike_queue_depth", "Items waiting for a batch, by batcher", ["batcher"])
EMBED_SECONDS = Histogram("lookalike_embed_batch_seconds", "ONNX Runtime time per batch")
MILVUS_SECONDS = Histogram("lookalike_milvus_seconds", "Milvus call latency by operation", ["operation"])
MILVUS_ERRORS = Counter("lookalike_milvus_errors_total", "Failed Milvus calls by operation", ["operation"])
ITEMS = Counter("lookalike_ingest_items_total", "Ingested items by outcome code", ["code"])
RERANK_SECONDS = Histogram(
    "lookalike_rerank_seconds", "Exact re-rank of a search's candidates (native core, with gathering them)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
INFLIGHT = Gauge("lookalike_inflight_requests", "Calls being served")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SEARCH_STAGE_SECONDS = Histogram(
    "lookalike_search_stage_seconds",
    "A Search's time by stage: vectors (its query vectors: read by id or embedded), queue (waiting for the "
    "search batcher), milvus (the ANN call its batch made), rank (ordering or re-ranking candidates), total",
    ["stage"], buckets=_LATENCY_BUCKETS,
)
BATCH_QUEUE_SECONDS = Histogram(
    "lookalike_batch_queue_seconds", "How long an item waited in a batcher before its batch started, by batcher",
    ["batcher"], buckets=_LATENCY_BUCKETS,
)
EVENT_LOOP_LAG_SECONDS = Histogram(
    "lookalike_event_loop_lag_seconds", "How late the event loop ran a timer: every call waits this long to move",
    buckets=_LATENCY_BUCKETS,
)
THROTTLE_SHARE = Gauge(
    "lookalike_ingest_bulk_share",
    "Share of its full pace that bulk work (ingest inference, upserts, flushes) may take: 1 at full speed, lower "
    "while recent Search latency nears --search-p99-target-ms",
)
THROTTLE_ENGAGEMENTS = Counter(
    "lookalike_ingest_throttle_engagements_total", "Times bulk work started yielding to searches (its share left 1)"
)
SEARCH_TARGET_UNREACHABLE = Gauge(
    "lookalike_search_target_unreachable",
    "1 while Search p99 stays over --search-p99-target-ms with ingest already at its slowest: slowing bulk work "
    "cannot hold the target",
)
SEARCH_P99_RECENT = Gauge("lookalike_search_p99_recent_seconds", "Search p99 over the throttle's recent window")
CALIBRATIONS_RUNNING = Gauge(
    "lookalike_recall_calibrations_running", "Recall calibrations being measured now (each scans its collection)"
)
CALIBRATION_SECONDS = Histogram(
    "lookalike_recall_calibration_seconds", "How long each recall calibration took to measure",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)


def serve_metrics(port: int, address: str = "0.0.0.0") -> None:
    """Starts the /metrics HTTP endpoint in a background thread."""
    start_http_server(port, addr=address)
