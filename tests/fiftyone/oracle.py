"""Exact search in numpy: the oracle the FiftyOne backend's results are checked against, and the size of the
server model's vectors. Shared by test_backend.py, test_backend_vectors.py, test_backend_parity.py and
test_registration.py."""

from __future__ import annotations

import numpy as np

DIM = 1280  # the server's model (EfficientNet-Lite0)


def exact_top(embeddings: np.ndarray, ids: list[str], query: np.ndarray, k: int, reverse: bool = False) -> list[str]:
    """The numpy oracle: ids by inner product with the query, best first (or worst first)."""
    scores = embeddings @ query
    order = np.argsort(scores if reverse else -scores, kind="stable")
    return [ids[i] for i in order[:k]]


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
