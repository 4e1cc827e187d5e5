"""The plain types every part of the pipeline speaks: what the service hands in, and what it gets back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidArgument, LookalikeError
from ..store import ID_MAX_BYTES, CollectionSpec

if TYPE_CHECKING:
    from .calibration import Calibration


@dataclass
class IngestItem:
    id: str
    collection: str = ""
    image: bytes | None = None
    vector: Sequence[float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Set when the item was already found wrong on the way in (e.g. an unfinished chunked upload).
    error: LookalikeError | None = None


@dataclass
class ItemResult:
    id: str
    code: str = "OK"
    message: str = ""
    vector: np.ndarray | None = None


@dataclass
class Query:
    """One query: exactly one of these is set. Several ids or vectors are searched by their mean."""

    vector: Sequence[float] | None = None
    image: bytes | None = None
    id: str | None = None
    ids: Sequence[str] | None = None
    vectors: Sequence[Sequence[float]] | None = None
    text: str | None = None
    texts: Sequence[str] | None = None


@dataclass
class SearchOptions:
    k: int
    filter_expr: str = ""
    include_metadata: bool = False
    include_vectors: bool = False
    reverse: bool = False
    offset: int = 0
    restrict_ids: Sequence[str] = ()
    consistency: str = ""  # "": the caller's own writes are visible (own_writes)
    min_recall: float = 0.0  # 0: the collection's own target
    caller: str = ""  # the client connection (gRPC peer) asking


@dataclass
class Hit:
    id: str
    score: float
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass
class CollectionInfo:
    spec: CollectionSpec
    row_count: int
    execution_provider: str
    model_precision: str
    calibrations: list[Calibration] = field(default_factory=list)
    embeds_text: bool = False  # the server's model has a text tower, and this collection holds its vectors


def check_id(item_id: str) -> None:
    if not item_id:
        raise InvalidArgument("empty id: every item needs an id of 1 to 512 bytes")
    size = len(item_id.encode("utf-8"))
    if size > ID_MAX_BYTES:
        raise InvalidArgument(f"id of {size} bytes is over the limit of {ID_MAX_BYTES} bytes")
