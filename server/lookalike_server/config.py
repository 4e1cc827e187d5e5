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


@dataclass(frozen=True)
class ServerConfig:
    address: str = "localhost:50051"
    data_dir: Path = Path("lookalike-data")
    # Empty: an embedded Milvus in data_dir (see milvus_embedded). Otherwise any Milvus, e.g. http://host:19530.
    milvus_uri: str = ""
    # The embedded Milvus when no URI is given: "lite" (Milvus Lite in this process), "lite-server" (Milvus
    # Lite as a child `milvus-lite server`), or "standalone" (the real Milvus standalone server of the PyPI
    # package `milvus`, from milvus_standalone_venv, as a child process started and stopped by serve).
    # "auto": the store already holding data in data_dir; in a new data_dir, standalone when it is installed
    # (it serves large collections best: bench/results/search.json), Milvus Lite otherwise.
    milvus_embedded: str = "auto"
    milvus_standalone_venv: str = ".venv-milvus"
    milvus_user: str = ""
    milvus_password: str = ""
    milvus_token: str = ""
    milvus_db_name: str = ""
    milvus_tls: bool = False
    milvus_ca_cert: str = ""
    milvus_client_cert: str = ""
    milvus_client_key: str = ""
    milvus_server_name: str = ""
    model_card: str = ""  # empty: the default model shipped with the server
    device: str = "auto"
    require_gpu: bool = False  # refuse to start unless a GPU execution provider is really active
    fp16: bool = False  # on a GPU: the network in float16 (its input and output stay float32)
    default_collection: str = "default"
    default_metric: str = "cosine"
    default_index: str = "HNSW"
    max_batch_size: int = 0  # 0: 4 on a CPU (short batches keep interactive calls fast), 64 on a GPU
    max_queue_delay_ms: float = 5.0
    decode_workers: int = 0  # 0: one per core; on a GPU only (on a CPU the inference threads decode)
    # ONNX Runtime threads per run; 0: one on a CPU (with a run per core side by side), every core on a GPU
    inference_threads: int = 0
    max_message_bytes: int = 64 * 1024 * 1024
    # Close client connections after this long (0: never), so balanced clients find new replicas.
    max_connection_age_s: float = 0.0
    max_image_pixels: int = 89_478_485  # Pillow's own decompression-bomb threshold
    # Items in flight per Ingest stream before the server stops reading it. 8 streams on 2 cores: 16 gave
    # 181-187 img/s against 137-156 at 64, whose 512 items in flight only churned the event loop.
    ingest_window: int = 16
    # HTTP/2 flow-control window of each stream: how many bytes a client may send beyond what the server has
    # read. gRPC's default grows it (BDP probing) to several MiB: 8 Ingest streams then pushed 900 photos
    # (51 MB) before the first was stored, a burst that held an Embed call beside them up for 100-230 ms.
    # 1 MiB still lets one stream carry about 20 MB/s over a 50 ms round trip.
    stream_window_bytes: int = 1024 * 1024
    # Security: `ROLE TOKEN` lines (read|write); TLS server certificate and key; a client CA turns on
    # mutual TLS (clients must present a certificate it signed).
    auth_tokens_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Operations
    metrics_port: int = 0  # 0: no Prometheus endpoint
    max_inflight_requests: int = 1024
    max_streams_per_client: int = 64
    max_image_bytes: int = 256 * 1024 * 1024  # an image assembled from chunks, at most
    max_metadata_bytes: int = 64 * 1024  # one item's metadata as JSON, at most
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    # Server processes on one port (SO_REUSEPORT) over one Milvus, under a supervisor (see workers.py).
    workers: int = 1
    # Share the port with other processes that ask the same (the workers do); otherwise a taken port fails.
    reuse_port: bool = False

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
        for name in ("max_queue_delay_ms", "max_connection_age_s", "shutdown_grace_s"):
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
