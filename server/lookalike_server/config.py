"""The server's configuration: one typed object, built once from flags > LOOKALIKE_* env > file > defaults."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

ENV_PREFIX = "LOOKALIKE_"
METRICS = ("cosine", "ip", "l2")
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
EMBEDDED_MILVUS = ("auto", "lite", "lite-server", "standalone")
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "SCANN")
# Index types only a Milvus server builds: Milvus Lite accepts them, then fails to build them in the background.
SERVER_ONLY_INDEX_TYPES = frozenset({"IVF_PQ", "SCANN"})
# Indexes that rank on compressed vectors: their candidates are over-fetched and re-ranked exactly.
QUANTIZED_INDEXES = frozenset({"IVF_SQ8", "IVF_PQ", "SCANN"})
# HTTP/2's initial window: a smaller flow-control window than this only slows every stream down.
MIN_STREAM_WINDOW_BYTES = 65535
# Milvus' own ceiling on topk for one search.
MAX_K = 16384
DEFAULT_DATA_DIR = Path("lookalike-data")


def setting(default: Any, help: str, choices: tuple[str, ...] = ()) -> Any:
    """A ServerConfig field with its command-line help (and allowed values): `flags.py` makes its flag."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class ServerConfig:
    """Every server setting. Each field is a flag (`--max-batch-size`), a variable (`LOOKALIKE_MAX_BATCH_SIZE`)
    and a key of the TOML config file; `load` merges them."""

    address: str = setting("localhost:50051", "listen address (default localhost:50051)")
    data_dir: Path = setting(DEFAULT_DATA_DIR, "where Milvus Lite keeps its data (default ./lookalike-data)")
    # Empty: an embedded Milvus in data_dir (see milvus_embedded). Otherwise any Milvus, e.g. http://host:19530.
    milvus_uri: str = setting("", "use this Milvus instead of an embedded one, e.g. http://host:19530")
    # The embedded Milvus when no URI is given: "lite" (Milvus Lite in this process), "lite-server" (Milvus
    # Lite as a child `milvus-lite server`), or "standalone" (the real Milvus standalone server of the PyPI
    # package `milvus`, a dependency of lookalike[server], as a child process started and stopped by serve).
    # "auto": the store already holding data in data_dir; in a new data_dir, standalone when it is installed
    # (it serves large collections best: bench/results/search.json), Milvus Lite otherwise.
    milvus_embedded: str = setting(
        "auto",
        "embedded Milvus without --milvus-uri: Milvus Lite in-process, Milvus Lite as a child server, or the real "
        "Milvus standalone server as a managed child process; auto (default): the one already holding the data "
        "directory's data, else standalone when installed, else lite",
        choices=EMBEDDED_MILVUS,
    )
    milvus_user: str = setting("", "Milvus user name")
    milvus_password: str = setting("", "Milvus password")
    milvus_token: str = setting("", "Milvus token (USER:PASSWORD, or an API key)")
    milvus_db_name: str = setting("", "Milvus database (default: Milvus' own default database)")
    milvus_tls: bool = setting(False, "connect to Milvus over TLS")
    milvus_ca_cert: str = setting("", "CA certificate (PEM) for Milvus TLS")
    milvus_client_cert: str = setting("", "client certificate (PEM) for Milvus mutual TLS")
    milvus_client_key: str = setting("", "client key (PEM) for Milvus mutual TLS")
    milvus_server_name: str = setting("", "expected server name in Milvus' certificate")
    model_card: str = setting("", "card.toml of the ONNX model to serve (default: EfficientNet-Lite0)")
    device: str = setting("auto", "where to embed (default auto)", choices=DEVICES)
    require_gpu: bool = setting(False, "refuse to start unless a GPU execution provider is really active")
    # On a GPU: the network in float16 (its input and output stay float32).
    fp16: bool = setting(False, "on a GPU, run the network in float16 (faster; embeddings agree to about 1e-3)")
    default_collection: str = setting("default", "collection used when a call names none (default 'default')")
    default_metric: str = setting("cosine", "metric of the default collection and of collections created without "
                                  "one (default cosine)", choices=METRICS)
    default_index: str = setting("HNSW", "index of the default collection and of collections created without "
                                 "one (default HNSW)", choices=INDEX_TYPES)
    # 0: 4 on a CPU (short batches keep interactive calls fast), 64 on a GPU.
    max_batch_size: int = setting(0, "images per inference batch (default: 4 on CPU, 64 on GPU)")
    max_queue_delay_ms: float = setting(5.0, "longest wait to fill a batch (default 5)")
    decode_workers: int = setting(0, "threads decoding images, on a GPU only (default 0: one per core; on a CPU "
                                  "the inference threads decode)")
    # ONNX Runtime threads per run; 0: one on a CPU (with a run per core side by side), every core on a GPU
    inference_threads: int = setting(0, "ONNX Runtime threads per run (default 0: one on a CPU, with a run per "
                                     "core side by side; every core on a GPU)")
    max_message_bytes: int = setting(64 * 1024 * 1024, "largest gRPC message (default 64 MiB)")
    # Close client connections after this long (0: never), so balanced clients find new replicas.
    max_connection_age_s: float = setting(
        0.0, "close client connections after this long so balanced clients find new replicas (off)")
    # Pillow's own decompression-bomb threshold.
    max_image_pixels: int = setting(89_478_485, "decompression-bomb limit in pixels (default 89478485)")
    # Items in flight per Ingest stream before the server stops reading it. 8 streams on 2 cores: 16 gave
    # 181-187 img/s against 137-156 at 64, whose 512 items in flight only churned the event loop.
    ingest_window: int = setting(16, "items in flight per Ingest stream before the server stops reading it "
                                 "(default 16)")
    # HTTP/2 flow-control window of each stream: how many bytes a client may send beyond what the server has
    # read. gRPC's default grows it (BDP probing) to several MiB: 8 Ingest streams then pushed 900 photos
    # (51 MB) before the first was stored, a burst that held an Embed call beside them up for 100-230 ms.
    # 1 MiB still lets one stream carry about 20 MB/s over a 50 ms round trip.
    stream_window_bytes: int = setting(1024 * 1024,
                                       "bytes a client may send ahead of the server on one stream (default 1 MiB)")
    # Security: `ROLE TOKEN` lines (read|write); TLS server certificate and key; a client CA turns on
    # mutual TLS (clients must present a certificate it signed).
    auth_tokens_file: str = setting("", "file of 'read TOKEN' / 'write TOKEN' lines: require bearer tokens")
    tls_cert: str = setting("", "server certificate (PEM): serve over TLS")
    tls_key: str = setting("", "server private key (PEM)")
    tls_client_ca: str = setting("", "CA (PEM) that signs client certificates: require mutual TLS")
    # Searches first: when recent Search p99 nears this, bulk work (ingest inference, upserts, flushes, Ingest
    # streams' reads, recall calibrations) slows down, and speeds up again once searches are quiet (search_slo.py).
    search_p99_target_ms: float = setting(
        100.0, "Search p99 latency target: ingest and other bulk work yield when recent searches near it, and "
        "take every cycle it leaves (default 100; 0: off)")
    # Operations
    metrics_port: int = setting(0, "serve Prometheus metrics on this port (default: off)")
    max_inflight_requests: int = setting(1024, "calls in flight before RESOURCE_EXHAUSTED (1024)")
    max_streams_per_client: int = setting(64, "open streams per client host (default 64)")
    max_image_bytes: int = setting(256 * 1024 * 1024, "largest image assembled from chunks (default 256 MiB)")
    max_metadata_bytes: int = setting(64 * 1024, "largest metadata of one item, as JSON (default 64 KiB)")
    shutdown_grace_s: float = setting(10.0, "seconds to finish calls in flight on SIGTERM (10)")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING (default INFO)")
    # Server processes on one port (SO_REUSEPORT) over one Milvus, under a supervisor (see workers.py).
    workers: int = setting(1, "server processes sharing the port (default 1): more cores for many small searches; "
                              "needs a Milvus server (--milvus-uri, or --milvus-embedded standalone / lite-server)")
    # Share the port with other processes that ask the same (the workers do); otherwise a taken port fails.
    reuse_port: bool = setting(False, "share the port with other processes that ask the same (serve --workers "
                                      "does); otherwise a taken port fails")

    def __post_init__(self) -> None:
        if self.milvus_embedded not in EMBEDDED_MILVUS:
            raise ValueError(f"milvus_embedded must be one of {EMBEDDED_MILVUS}, got {self.milvus_embedded!r}")
        if self.default_metric not in METRICS:
            raise ValueError(f"default_metric must be one of {METRICS}, got {self.default_metric!r}")
        if self.default_index not in INDEX_TYPES:
            raise ValueError(f"default_index must be one of {INDEX_TYPES}, got {self.default_index!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("mutual TLS (tls_client_ca) needs tls_cert and tls_key too")
        for name in ("ingest_window", "max_message_bytes", "max_image_pixels", "max_image_bytes",
                     "max_metadata_bytes", "max_inflight_requests", "max_streams_per_client", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("decode_workers", "inference_threads", "metrics_port"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (automatic/off) or more, got {getattr(self, name)}")
        for name in ("max_queue_delay_ms", "max_connection_age_s", "shutdown_grace_s", "search_p99_target_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of at least 0, got {value}")
        if self.stream_window_bytes < MIN_STREAM_WINDOW_BYTES:
            raise ValueError(f"stream_window_bytes must be at least {MIN_STREAM_WINDOW_BYTES} (HTTP/2's own "
                             f"initial window), got {self.stream_window_bytes}")
        if self.max_batch_size < 0:
            raise ValueError("max_batch_size must be at least 1 (or 0 for automatic)")

    @property
    def milvus_lite_path(self) -> Path:
        return self.data_dir / "milvus.db"

    def redacted(self) -> dict[str, Any]:
        """The settings for a log line, secrets masked."""
        out = dataclasses.asdict(self)
        for key in ("milvus_password", "milvus_token"):
            if out[key]:
                out[key] = "***"
        return out

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        config_file: Path | str | None = None,
    ) -> ServerConfig:
        """Merges the sources; flags that are None count as not given."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        config_file = config_file or env.get(f"{ENV_PREFIX}CONFIG")
        if config_file:
            with Path(config_file).open("rb") as f:
                values.update(tomllib.load(f))
        for field in fields(cls):
            key = ENV_PREFIX + field.name.upper()
            if key in env:
                values[field.name] = env[key]
        values.update({k: v for k, v in (flags or {}).items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        return cls(**{f.name: _convert(f, values[f.name]) for f in fields(cls) if f.name in values})


def _convert(field: dataclasses.Field, value: Any) -> Any:
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "Path":
            return Path(value)
        return str(value)
    except ValueError:
        raise ValueError(f"setting {field.name}: cannot read {value!r} as {kind}") from None
