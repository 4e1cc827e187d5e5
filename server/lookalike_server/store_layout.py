"""lookalike's rows in Milvus: their limits, a collection's settings, the index build and search parameters
lookalike gives Milvus, and Milvus' replies turned into candidates and rows (store.py makes the calls)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .milvus_rpc import Rows

ID_MAX_BYTES = 512
# HNSW searches look at least this many candidates per result wanted, with Milvus' largest ef at most.
HNSW_EF_PER_RESULT = 2
# ScaNN's 4-bit scores are coarse: on 50,000 random 1280-d rows, every list probed, re-scoring 100 candidates
# on the raw vectors gave recall@10 0.991 (0.97 with lists still being indexed), re-scoring 320 gave 1.0.
SCANN_REORDER_PER_RESULT = 16
SCANN_MIN_REORDER = 320
MAX_EF = 32_768

# Build parameters must be nested under "params": Milvus Lite silently ignores them at the top level.
DEFAULT_BUILD_PARAMS: dict[str, dict[str, int]] = {
    "FLAT": {},
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 128},
    "IVF_SQ8": {"nlist": 128},
    # m (sub-vectors) depends on the dimension: see build_params.
    "IVF_PQ": {"nlist": 128, "nbits": 8},
    # With its raw vectors kept, ScaNN refines its candidates and can return their vectors for our re-rank.
    "SCANN": {"nlist": 128, "with_raw_data": True},
}


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    metric: str  # "cosine" | "ip" | "l2"
    index_type: str  # "FLAT" | "HNSW" | "IVF_FLAT" | "IVF_SQ8"; a Milvus server also "IVF_PQ" | "SCANN"
    model: str
    dimension: int
    index_params: dict[str, int] = field(default_factory=dict)
    min_recall: float = 0.99


@dataclass
class Candidate:
    id: str
    vector: np.ndarray | None  # only when asked for (a quantized index, or the caller wants vectors)
    metadata: dict[str, Any] | None
    distance: float = math.nan  # as Milvus computed it for this query


def build_params(index_type: str, dimension: int, asked: dict[str, Any]) -> dict[str, Any]:
    """The index's build parameters: ours by default, the caller's where given."""
    params: dict[str, Any] = dict(DEFAULT_BUILD_PARAMS[index_type])
    if index_type == "IVF_PQ":
        # m must divide the dimension. Sub-vectors of 2 floats (1280-d: m 640, 8x smaller than the vectors):
        # on 50,000 random 1280-d rows, 8 candidates per result re-ranked gave recall@10 1.0 at m 640, 0.86 at
        # m 320 and 0.42 at m 160 (where even 32 per result reached only 0.56).
        params["m"] = max((m for m in range(1, dimension // 2 + 1) if dimension % m == 0),
                          key=lambda m: -abs(dimension // m - 2), default=1)
    return {**params, **asked}


def search_params(index_type: str, limit: int, effort: int = 0) -> dict[str, Any]:
    """Milvus search parameters; `effort` is ef for HNSW or nprobe for IVF (0: a safe default)."""
    if index_type == "HNSW":
        # ef at least 2k: a beam only as wide as k misses neighbours at large k (recall@200 0.96 at ef = k).
        return {"params": {"ef": max(limit, min(MAX_EF, max(effort or 64, HNSW_EF_PER_RESULT * limit)))}}
    if index_type.startswith("IVF"):
        return {"params": {"nprobe": effort or 32}}
    if index_type == "SCANN":
        # reorder_k: how many of the quantized candidates ScaNN re-scores on the raw vectors.
        return {"params": {"nprobe": effort or 32,
                           "reorder_k": max(SCANN_REORDER_PER_RESULT * limit, SCANN_MIN_REORDER)}}
    return {"params": {}}


def candidates(results: Any, with_vectors: bool, with_metadata: bool) -> list[list[Candidate]]:
    return [
        [
            Candidate(
                id=hit["id"],
                vector=np.asarray(hit["entity"]["vector"], dtype=np.float32) if with_vectors else None,
                metadata=hit["entity"].get("metadata") if with_metadata else None,
                distance=float(hit["distance"]),
            )
            for hit in hits
        ]
        for hits in results
    ]


def output_fields(with_vectors: bool, with_metadata: bool) -> list[str]:
    """The fields a search or read asks for: always "id" (Milvus Lite returns every field when asked for none)."""
    return ["id"] + (["vector"] if with_vectors else []) + (["metadata"] if with_metadata else [])


def hits_per_query(rows: Rows) -> list[list[Candidate]]:
    hits: list[list[Candidate]] = []
    start = 0
    for count in rows.counts:
        hits.append([
            Candidate(
                id=rows.ids[n],
                vector=rows.vectors[n] if rows.vectors is not None else None,
                metadata=rows.metadata[n] if rows.metadata is not None else None,
                distance=rows.distances[n],
            )
            for n in range(start, start + count)
        ])
        start += count
    return hits


def rows_by_id(
    rows: list[dict[str, Any]], with_vectors: bool, with_metadata: bool
) -> dict[str, tuple[np.ndarray | None, dict[str, Any] | None]]:
    return {
        row["id"]: (
            np.asarray(row["vector"], dtype=np.float32) if with_vectors else None,
            row.get("metadata") if with_metadata else None,
        )
        for row in rows
    }
