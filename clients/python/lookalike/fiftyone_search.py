"""Queries of the FiftyOne backend's index: FiftyOne's queries turned into the server's (ids, vectors, images,
text), top-k lists restricted to the current view, and the neighbour searches behind duplicates and uniqueness.

`SimilaritySearch` is a mixin of `LookalikeSimilarityIndex` (lookalike.fiftyone_index), which provides the
client, the collection, `_errors()` and `_existing()`. A new kind of query (a text prompt, say) is parsed in
`_parse_query` and turned into the server's queries in `_search_queries`.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import eta.core.utils as etau
import numpy as np
from bson import ObjectId

from lookalike.client import IMAGE_EXTENSIONS, ById, ByIds, Hit, MeanOf, Text, Texts
from lookalike.fiftyone_common import MAX_K, batches

_QUERIES_PER_CALL = 256  # queries in one Search call (fewer when k is large)
_HITS_PER_CALL = 8192  # queries x k in one Search call: the server reads every candidate's vector from Milvus
_FIRST_NEIGHBORS = 2  # the first k of a neighbour search by id: the id itself and its nearest neighbour


@dataclass(frozen=True)
class _Queries:
    """Parsed queries that only the server can turn into vectors: image bytes or text prompts."""

    kind: str  # "images" or "text"
    items: list[Any]


class SimilaritySearch:
    """Queries and neighbour searches of a LookalikeSimilarityIndex (a mixin: see the module's docstring)."""

    def _init_search(self) -> None:
        self._as_distances = False
        self._neighbors: dict[str, list[tuple[str, float]]] = {}
        self._neighbors_k: dict[str, int] = {}

    # Queries

    def _parse_query(self, query: Any) -> Any:
        """FiftyOne's queries, plus image files/bytes, and text prompts embedded on the server."""
        if isinstance(query, (bytes, bytearray)):
            return _Queries("images", [bytes(query)])
        if isinstance(query, np.ndarray):
            return super()._parse_query(query)
        items = [query] if etau.is_str(query) or isinstance(query, os.PathLike) else list(query or ())
        if items and all(isinstance(q, (str, os.PathLike)) and not _is_object_id(q) for q in items):
            if all(_is_image_file(q) for q in items):
                return _Queries("images", [Path(q).read_bytes() for q in items])
            if self.config.model is None:
                return _Queries("text", [str(q) for q in items])
        return super()._parse_query(query)

    def _search_queries(self, query: Any, aggregation: str | None) -> tuple[list[Any], bool]:
        """Server queries for a parsed query, and whether it was a single query."""
        if aggregation not in (None, "mean"):
            raise ValueError(f"Unsupported aggregation {aggregation!r}; the lookalike backend supports 'mean'")
        if isinstance(query, _Queries):
            if not self.config.server_model:
                raise ValueError(
                    "This index holds embeddings computed outside the lookalike server, so the server cannot embed "
                    f"{'text' if query.kind == 'text' else 'image'} queries for it: query by ids or vectors"
                )
            wrap = Text if query.kind == "text" else (lambda item: item)
            if len(query.items) == 1 or aggregation != "mean":
                return [wrap(item) for item in query.items], len(query.items) == 1
            if query.kind == "text":
                return [Texts(query.items)], True  # the server searches by the prompts' mean
            with self._errors():
                return [MeanOf(list(self._client.embed(query.items)))], True
        if etau.is_str(query):
            return [ById(query)], True
        query = np.asarray(query)
        if np.issubdtype(query.dtype, np.number):
            if query.ndim == 1:
                return [query], True
            if aggregation == "mean":
                return [MeanOf(list(query))], True
            return list(query), False
        ids = [str(i) for i in query]
        if aggregation == "mean":
            return [ById(ids[0]) if len(ids) == 1 else ByIds(ids)], True
        return [ById(i) for i in ids], False

    def _current_ids(self) -> list[str]:
        ids = self.current_label_ids if self.config.patches_field is not None else self.current_sample_ids
        return [str(i) for i in ids]

    def _search(
        self, queries: Sequence[Any], k: int, reverse: bool = False, include_metadata: bool = False
    ) -> list[list[Hit]]:
        """Exact top-k lists from the server, many queries per call; inside the current view if any."""
        restrict = self._current_ids() if self.has_view else ()
        per_call = max(1, min(_QUERIES_PER_CALL, _HITS_PER_CALL // k))
        results: list[list[Hit]] = []
        with self._errors():
            for batch in batches(list(queries), per_call):
                results.extend(
                    self._client.search_many(
                        batch,
                        k=k,
                        collection=self.collection_name,
                        include_metadata=include_metadata,
                        reverse=reverse,
                        restrict_ids=restrict,
                        consistency=self.config.consistency_level,
                    )
                )
        return results

    def _kneighbors(
        self,
        query: Any = None,
        k: int | None = None,
        reverse: bool = False,
        aggregation: str | None = None,
        return_dists: bool = False,
    ) -> Any:
        if query is None:
            return self._full_index_neighbors(k or 1, return_dists)
        if k is None:
            k = len(self._current_ids()) if self.has_view else self.total_index_size
            if k > MAX_K:
                raise ValueError(f"The lookalike backend returns at most {MAX_K} results: pass k<={MAX_K}")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"The lookalike backend requires 1<=k<={MAX_K}, got k={k}")

        queries, single = self._search_queries(query, aggregation)
        patches = self.config.patches_field is not None
        results = self._search(queries, k, reverse=reverse, include_metadata=patches)
        sample_ids = [[h.metadata["sample_id"] if patches else h.id for h in hits] for hits in results]
        label_ids = [[h.id for h in hits] for hits in results] if patches else None
        dists = [[self._dist(h.score) for h in hits] for hits in results]
        if single:
            sample_ids, dists = sample_ids[0], dists[0]
            label_ids = label_ids[0] if label_ids is not None else None
        if return_dists:
            return sample_ids, label_ids, dists
        return sample_ids, label_ids

    def _dist(self, score: float) -> float:
        """The server's score, or a distance (smaller is closer) while finding duplicates."""
        return _distance(score, self.config.metric) if self._as_distances else score

    # Neighbours of every point, for duplicates and uniqueness

    @contextlib.contextmanager
    def _distance_mode(self) -> Iterator[None]:
        self._as_distances = True
        self._forget_neighbors()
        try:
            yield
        finally:
            self._as_distances = False
            self._forget_neighbors()

    def find_duplicates(self, thresh: float | None = None, fraction: float | None = None) -> None:
        """FiftyOne's duplicate search, with every neighbour search done by the server."""
        with self._distance_mode():
            super().find_duplicates(thresh=thresh, fraction=fraction)

    def find_unique(self, count: int) -> None:
        with self._distance_mode():
            super().find_unique(count)

    def plot_distances(self, *args: Any, **kwargs: Any) -> Any:
        with self._distance_mode():
            return super().plot_distances(*args, **kwargs)

    def _forget_neighbors(self) -> None:
        self._neighbors = {}
        self._neighbors_k = {}

    def _neighbors_of(self, ids: list[str], thresh: float | None = None, k: int | None = None) -> None:
        """Fills the neighbour cache (id -> [(neighbour, distance)], nearest first, without the id itself)
        until every id has all its neighbours within `thresh`, or its `k` nearest.

        Each round asks the server for the k nearest of the ids still short, by id, many per call; k grows
        fourfold per round, so no vector ever leaves the server.
        """
        limit = min(MAX_K, len(ids) if self.has_view else max(self.total_index_size, 1))
        present = self._existing(ids) if set(ids) - set(self._neighbors) else set(ids)
        for i in ids:
            if i not in present:
                self._neighbors[i], self._neighbors_k[i] = [], limit  # not in the index: no neighbours

        def short(i: str) -> bool:
            have, fetched = self._neighbors.get(i), self._neighbors_k.get(i, 0)
            if have is None:
                return True
            if fetched >= limit or len(have) < fetched - 1:
                return False  # every candidate was returned
            if k is not None:
                return len(have) < k
            return not have or have[-1][1] <= thresh

        todo = [i for i in ids if short(i)]
        while todo:
            by_k: dict[int, list[str]] = collections.defaultdict(list)
            for i in todo:
                wanted = _FIRST_NEIGHBORS if i not in self._neighbors else 4 * self._neighbors_k[i]
                if k is not None:
                    wanted = max(wanted, k + 1)
                by_k[min(wanted, limit)].append(i)
            for fetch, group in by_k.items():
                for i, hits in zip(group, self._search([ById(i) for i in group], fetch), strict=True):
                    self._neighbors[i] = [(h.id, _distance(h.score, self.config.metric)) for h in hits if h.id != i]
                    self._neighbors_k[i] = fetch
            todo = [i for i in todo if short(i)]

    def _radius_neighbors(self, query: Any = None, thresh: float | None = None, return_dists: bool = False) -> Any:
        if query is not None:
            raise ValueError("The lookalike backend finds radius neighbours of the whole index or view only")
        if thresh is None:
            raise ValueError("A distance threshold is required")
        ids = self._current_ids()
        self._neighbors_of(ids, thresh=thresh)
        position = {i: n for n, i in enumerate(ids)}
        inds, dists = [], []
        for i in ids:
            near = [(position[j], d) for j, d in self._neighbors[i] if d <= thresh and j in position]
            inds.append(np.array([p for p, _ in near], dtype=np.int64))
            dists.append(np.array([d for _, d in near], dtype=np.float64))
        return (inds, dists) if return_dists else inds

    def _full_index_neighbors(self, k: int, return_dists: bool) -> Any:
        """The k nearest neighbours (integer positions in the current ids) of every point, itself excluded."""
        ids = self._current_ids()
        self._neighbors_of(ids, k=k)
        position = {i: n for n, i in enumerate(ids)}
        inds, dists = [], []
        for i in ids:
            near = [(position[j], d) for j, d in self._neighbors[i] if j in position][:k]
            inds.append(np.array([p for p, _ in near], dtype=np.int64))
            dists.append(np.array([d if self._as_distances else _score(d, self.config.metric) for _, d in near]))
        return (inds, dists) if return_dists else inds


# Helpers


def _distance(score: float, metric: str) -> float:
    """A server score as a distance: 1 - cosine, 1 - inner product, or Euclidean (from squared L2)."""
    if metric == "euclidean":
        return float(np.sqrt(max(score, 0.0)))
    return 1.0 - score


def _score(distance: float, metric: str) -> float:
    """The inverse of `_distance`."""
    return distance * distance if metric == "euclidean" else 1.0 - distance


def _is_object_id(value: Any) -> bool:
    return etau.is_str(value) and ObjectId.is_valid(value)


def _is_image_file(value: Any) -> bool:
    path = Path(value)
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
