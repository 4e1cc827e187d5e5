"""Vectors that come in from clients: checked against their collection, normalised for cosine, averaged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _native
from ..errors import InvalidArgument
from ..store import CollectionSpec


def check_vector(values: Sequence[float], spec: CollectionSpec) -> np.ndarray:
    """`values` as a float32 vector of the collection's dimension, finite, unit length for cosine."""
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
        vector = np.array(values, dtype=np.float32).reshape(1, -1)
    if vector.shape[1] != spec.dimension:
        raise InvalidArgument(
            f"vector has {vector.shape[1]} dimensions, collection {spec.name!r} has {spec.dimension}"
        )
    if not np.isfinite(vector).all():
        raise InvalidArgument("vector contains NaN or infinity")
    if spec.metric == "cosine":
        _native.normalize_rows(vector)
    return vector[0]


def mean_of(vectors: list[np.ndarray], spec: CollectionSpec) -> np.ndarray:
    """The mean of several query vectors (unit length again for cosine)."""
    # In float64: the float32 sum of valid vectors can overflow (2 x 3e38).
    mean = np.mean(np.stack(vectors), axis=0, dtype=np.float64).astype(np.float32).reshape(1, -1)
    if spec.metric == "cosine":
        _native.normalize_rows(mean)
    return mean[0]
