"""Shared by the FiftyOne backend's modules: the server's limits, FiftyOne's names for lookalike's settings, and
the connection with its FiftyOne-worded error, and the backend's one logger."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lookalike.client import Client

if TYPE_CHECKING:
    from lookalike.fiftyone_brain import LookalikeSimilarityConfig

logger = logging.getLogger("lookalike.fiftyone_brain")  # the backend's one logger, as before the split

MAX_K = 16384  # the server's limit on k (and on offset + k)

# FiftyOne's metric names -> lookalike's.
METRICS = {"cosine": "cosine", "dotproduct": "ip", "euclidean": "l2"}
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "SCANN")  # the last two: a Milvus server only
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")

IDS_PER_CALL = 1000  # ids in one Get or Delete call


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def unreachable(server: str, brain_key: str | None, details: str) -> str:
    """What a FiftyOne user reads when the server does not answer: where it was looked for, how to fix it."""
    said = details.split("gRPC said: ", 1)[-1]  # the client's own advice names CLI flags: keep gRPC's words only
    run = f" (brain run {brain_key!r})" if brain_key else ""
    return (
        f"no lookalike server answers at {server}{run}: start one with `lookalike serve`, or point to a running "
        "one with server='HOST:PORT' (in compute_similarity or load_brain_results), the environment variable "
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER, or 'server' under similarity_backends.lookalike in "
        f"FiftyOne's brain config. gRPC said: {said}"
    )


def connect(config: LookalikeSimilarityConfig) -> Client:
    """A client for the configured server: plain, or with TLS when asked or when certificates are given."""
    return Client(
        config.server, token=config.token or None, ca_cert=config.ca_pem_path or None,
        client_cert=config.client_pem_path or None, client_key=config.client_key_path or None,
        secure=bool(config.secure), server_name=config.server_name or None,
    )
