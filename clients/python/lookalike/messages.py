"""What the Python clients send and get back: plain values (queries, hits, collections) to wire messages and
back, shared by Client and AsyncClient."""


from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2

from lookalike.v1 import lookalike_pb2 as pb

from .channel import LookalikeClientError

# Images larger than this are uploaded in chunks of this size (the server joins them).
CHUNK_BYTES = 4 * 1024 * 1024
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
_METRICS = {"cosine": pb.METRIC_COSINE, "ip": pb.METRIC_IP, "l2": pb.METRIC_L2, "": pb.METRIC_UNSPECIFIED}
_INDEXES = {
    "": pb.INDEX_TYPE_UNSPECIFIED,
    "FLAT": pb.INDEX_TYPE_FLAT,
    "HNSW": pb.INDEX_TYPE_HNSW,
    "IVF_FLAT": pb.INDEX_TYPE_IVF_FLAT,
    "IVF_SQ8": pb.INDEX_TYPE_IVF_SQ8,
    "IVF_PQ": pb.INDEX_TYPE_IVF_PQ,
    "SCANN": pb.INDEX_TYPE_SCANN,
}


@dataclass(frozen=True)
class ById:
    """A query by a stored id: the vector stays on the server."""

    id: str


@dataclass(frozen=True)
class ByIds:
    """Several stored ids searched as one query, by the mean of their vectors."""

    ids: Sequence[str]


@dataclass(frozen=True)
class MeanOf:
    """Several vectors searched as one query, by their mean."""

    vectors: Sequence[Sequence[float]]


@dataclass(frozen=True)
class Text:
    """A text prompt, for models with a text tower (`CollectionInfo.embeds_text`): the server embeds it."""

    text: str


@dataclass(frozen=True)
class Texts:
    """Several text prompts searched as one query, by the mean of their vectors."""

    texts: Sequence[str]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class IngestResult:
    id: str
    code: str
    message: str

    @property
    def ok(self) -> bool:
        return self.code == "OK"


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    metric: str
    index_type: str
    model: str
    dimension: int
    row_count: int
    execution_provider: str
    index_params: dict[str, int]
    min_recall: float
    # k -> (effort, recall) as the server's recall calibration measured them.
    calibrations: dict[int, tuple[int, float]]
    model_precision: str = "float32"  # "float16" with --fp16, "int8" with a quantized card
    vectors_only: bool = False  # vectors computed elsewhere: no images, no image or text queries
    embeds_text: bool = False  # the server's model has a text tower for this collection: Text queries work
# A query: an image path, image bytes, a vector, or a stored id.
QueryLike = str | os.PathLike | bytes | Sequence[float] | np.ndarray | ById | ByIds | MeanOf | Text | Texts
CONSISTENCY_LEVELS = {
    "": pb.CONSISTENCY_UNSPECIFIED,
    "Strong": pb.CONSISTENCY_STRONG,
    "Session": pb.CONSISTENCY_SESSION,
    "Bounded": pb.CONSISTENCY_BOUNDED,
    "Eventually": pb.CONSISTENCY_EVENTUALLY,
}
# An item to ingest: (id, image path | image bytes | vector[, metadata]).
ItemLike = tuple[str, Any] | tuple[str, Any, Mapping[str, Any]]


def struct_from(data: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if not data:
        return None
    message = struct_pb2.Struct()
    message.update(dict(data))
    return message


def dict_from(message: struct_pb2.Struct, present: bool) -> dict[str, Any] | None:
    return json_format.MessageToDict(message) if present else None


def collection_from_wire(info: pb.CollectionInfo) -> CollectionInfo:
    return CollectionInfo(
        name=info.name,
        metric=pb.Metric.Name(info.metric).removeprefix("METRIC_").lower(),
        index_type=pb.IndexType.Name(info.index_type).removeprefix("INDEX_TYPE_"),
        model=info.model,
        dimension=info.dimension,
        row_count=info.row_count,
        execution_provider=info.execution_provider,
        index_params=dict(info.index_params),
        min_recall=info.min_recall,
        calibrations={c.k: (c.effort, c.recall) for c in info.calibrations if abs(c.target - info.min_recall) < 1e-4},
        model_precision=info.model_precision or "float32",
        vectors_only=info.vectors_only,
        embeds_text=info.embeds_text,
    )


def create_collection_request(
    name: str, metric: str, index_type: str, index_params: Mapping[str, int] | None, min_recall: float, dimension: int,
    vectors_only: bool = False,
) -> pb.CreateCollectionRequest:
    return pb.CreateCollectionRequest(
        name=name,
        metric=_METRICS[metric],
        index_type=_INDEXES[index_type],
        index_params=dict(index_params or {}),
        min_recall=min_recall,
        dimension=dimension,
        vectors_only=vectors_only,
    )


def ingest_requests(item: ItemLike, collection: str) -> list[pb.IngestRequest]:
    """One request per item; images over CHUNK_BYTES go as several chunk requests of the same id."""
    item_id, content, *rest = item
    metadata = struct_from(rest[0] if rest else None)
    if isinstance(content, (str, os.PathLike)):
        content = Path(content).read_bytes()
    if isinstance(content, (bytes, bytearray, memoryview)):
        data = bytes(content)
        if len(data) <= CHUNK_BYTES:
            return [pb.IngestRequest(collection=collection, id=item_id, metadata=metadata, image=data)]
        starts = range(0, len(data), CHUNK_BYTES)
        return [
            pb.IngestRequest(
                collection=collection, id=item_id, metadata=metadata if start == 0 else None,
                chunk=pb.ImageChunk(data=data[start : start + CHUNK_BYTES], last=start == starts[-1]),
            )
            for start in starts
        ]
    request = pb.IngestRequest(collection=collection, id=item_id, metadata=metadata)
    request.vector.values.extend(np.asarray(content, dtype=np.float32).ravel().tolist())
    return [request]


def embed_request(images: Sequence[str | os.PathLike | bytes]) -> pb.EmbedRequest:
    return pb.EmbedRequest(items=[
        pb.ImageItem(id=str(i), image=Path(img).read_bytes() if isinstance(img, (str, os.PathLike)) else img)
        for i, img in enumerate(images)
    ])


def _utf8(text: str) -> str:
    """The prompt itself; a ValueError naming it if it cannot be sent (protobuf strings must be UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text prompt {text!r} cannot be sent: it is not valid Unicode ({e.reason} at "
                         f"position {e.start}), and protobuf strings must be UTF-8") from None
    return text


def embed_texts_request(texts: Sequence[str]) -> pb.EmbedRequest:
    return pb.EmbedRequest(texts=[pb.TextItem(id=str(i), text=_utf8(t)) for i, t in enumerate(texts)])


def embeddings_from_reply(reply: pb.EmbedResponse) -> np.ndarray:
    """The (N, dim) array of an Embed reply; raises on the first image the server could not embed."""
    for result in reply.results:
        if result.code != pb.OK:
            raise LookalikeClientError(pb.StatusCode.Name(result.code), result.message)
    return np.array([r.vector.values for r in reply.results], dtype=np.float32)


def query_message(query: QueryLike) -> pb.Query:
    if isinstance(query, ById):
        return pb.Query(id=query.id)
    if isinstance(query, ByIds):
        return pb.Query(ids=pb.IdList(ids=list(query.ids)))
    if isinstance(query, MeanOf):
        vectors = [pb.Vector(values=np.asarray(v, dtype=np.float32).ravel().tolist()) for v in query.vectors]
        return pb.Query(vectors=pb.VectorList(vectors=vectors))
    if isinstance(query, Text):
        return pb.Query(text=_utf8(query.text))
    if isinstance(query, Texts):
        return pb.Query(texts=pb.TextList(texts=[_utf8(t) for t in query.texts]))
    if isinstance(query, (str, os.PathLike)):
        return pb.Query(image=Path(query).read_bytes())
    if isinstance(query, (bytes, bytearray)):
        return pb.Query(image=bytes(query))
    return pb.Query(vector=pb.Vector(values=np.asarray(query, dtype=np.float32).ravel().tolist()))


def search_request(
    queries: Sequence[QueryLike],
    k: int,
    collection: str,
    filter: str,
    include_metadata: bool,
    include_vectors: bool,
    reverse: bool,
    offset: int,
    restrict_ids: Sequence[str],
    consistency: str,
    min_recall: float,
) -> pb.SearchRequest:
    return pb.SearchRequest(
        collection=collection,
        queries=[query_message(q) for q in queries],
        k=k,
        filter=filter,
        include_metadata=include_metadata,
        include_vectors=include_vectors,
        reverse=reverse,
        offset=offset,
        restrict_ids=list(restrict_ids),
        consistency=CONSISTENCY_LEVELS[consistency],
        min_recall=min_recall,
    )


def hits_from_reply(reply: pb.SearchResponse, include_metadata: bool, include_vectors: bool) -> list[list[Hit]]:
    return [
        [
            Hit(
                h.id,
                h.score,
                dict_from(h.metadata, include_metadata),
                np.asarray(h.vector.values, dtype=np.float32) if include_vectors else None,
            )
            for h in result.hits
        ]
        for result in reply.results
    ]


def rows_from_reply(
    reply: pb.GetResponse, vectors: bool, metadata: bool
) -> dict[str, tuple[np.ndarray | None, dict[str, Any] | None]]:
    return {
        item.id: (
            np.asarray(item.vector.values, dtype=np.float32) if vectors else None,
            dict_from(item.metadata, metadata),
        )
        for item in reply.items
    }


def image_files(root: Path | str, all_files: bool = False) -> Iterator[Path]:
    """Image files under root, recursively, in a stable order; hidden files and folders are skipped."""
    root = Path(root)
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and (all_files or path.suffix.lower() in IMAGE_EXTENSIONS):
                yield path
