"""FiftyOne similarity backend `lookalike`: FiftyOne's brain indexes and searches through a lookalike server.

The same Config / Similarity / Index triad as fiftyone-brain's Milvus backend, talking only to lookalike's
gRPC API. With no `model` and no `embeddings`, `fob.compute_similarity(dataset, backend="lookalike")`
streams each sample's image (or each object patch) to the server, which embeds and stores it.

Register the backend once (`lookalike fiftyone-register`, or `register()` in lookalike.fiftyone_registration),
or with the environment (`lookalike fiftyone-register --print-env` prints it):
`FIFTYONE_MODULE_PATH=lookalike.fiftyone_autoload`, `FIFTYONE_BRAIN_SIMILARITY_BACKENDS="*,lookalike"` and
`FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS=lookalike.fiftyone_brain.LookalikeSimilarityConfig`.
Without the first, FiftyOne loads its default zoo model before importing the backend when no model is given:
the backend then stops with an error saying so rather than store that model's vectors.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import eta.core.utils as etau
import fiftyone.brain.internal.core.utils as fbu
import fiftyone.brain.similarity as fbs
import fiftyone.core.labels as fol
import fiftyone.core.utils as fou
import numpy as np
from bson import ObjectId
from PIL import Image

from lookalike.client import (
    DEFAULT_SERVER,
    IMAGE_EXTENSIONS,
    ById,
    ByIds,
    Client,
    CollectionInfo,
    Hit,
    IngestResult,
    LookalikeClientError,
    MeanOf,
    Text,
)
from lookalike.fiftyone_registration import BACKEND, chosen_model_message, install, model_fiftyone_chose
from lookalike.fiftyone_registration import CONFIG_CLS as CONFIG_CLS  # these three: importable here, as before
from lookalike.fiftyone_registration import register as register
from lookalike.fiftyone_registration import register_autoload as register_autoload

logger = logging.getLogger(__name__)

MAX_K = 16384  # the server's limit on k (and on offset + k)

# FiftyOne's metric names -> lookalike's.
METRICS = {"cosine": "cosine", "dotproduct": "ip", "euclidean": "l2"}
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "SCANN")  # the last two: a Milvus server only
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")

_QUERIES_PER_CALL = 256  # queries in one Search call (fewer when k is large)
_HITS_PER_CALL = 8192  # queries x k in one Search call: the server reads every candidate's vector from Milvus
_IDS_PER_CALL = 1000  # ids in one Get or Delete call
_NAME_TRIES = 100  # names tried when Milvus holds collections lookalike cannot see
# New runs' collections: FiftyOne's Milvus backend names its own `fiftyone_<dataset>` on a Milvus both may share.
COLLECTION_PREFIX = "lookalike_fiftyone_"
_FIRST_NEIGHBORS = 2  # the first k of a neighbour search by id: the id itself and its nearest neighbour


class LookalikeSimilarityConfig(fbs.SimilarityConfig):
    """Configuration for the lookalike similarity backend.

    Args:
        collection_name (None): the lookalike collection to use or create; by default a new one named
            ``lookalike_fiftyone_<dataset>`` (``_2``, ``_3``... when taken, in lookalike or in Milvus itself)
        metric ("cosine"): ``"cosine"``, ``"dotproduct"`` or ``"euclidean"`` (lookalike's cosine, ip, l2)
        index_type (None): ``"FLAT"``, ``"HNSW"``, ``"IVF_FLAT"``, ``"IVF_SQ8"``, or on a Milvus server
            ``"IVF_PQ"`` or ``"SCANN"``; None is the server's default
        index_params (None): index build parameters, e.g. ``{"M": 16, "efConstruction": 200}``
        min_recall (None): the recall a search must reach by default; None is the server's (0.99)
        consistency_level ("Session"): ``"Strong"``, ``"Session"``, ``"Bounded"`` or ``"Eventually"``
        server (None): the server's ``HOST:PORT``; None means ``localhost:50051``
        server_model (None): the server model that embedded the images, when the server did (set by the backend)
        embeddings_from_server (False): declares that vectors given to ``compute_similarity(embeddings=...)`` or
            ``add_to_index()`` were computed by this server's model (``Client.embed``, say), so the collection
            carries that model and the server embeds image and text queries for it. Otherwise such vectors get a
            vectors-only collection, which the server never labels with its model: queries by vector or id only
        token (None): a bearer token sent as ``authorization: Bearer <token>``
        secure (None): whether to use TLS (implied by any of the certificate paths)
        ca_pem_path (None): the CA certificate that signed the server's certificate
        client_pem_path (None): a client certificate, for mutual TLS
        client_key_path (None): the client certificate's key, for mutual TLS
        server_name (None): the name to expect in the server's certificate
        **kwargs: keyword arguments for :class:`fiftyone.brain.similarity.SimilarityConfig`
    """

    def __init__(
        self,
        collection_name: str | None = None,
        metric: str = "cosine",
        index_type: str | None = None,
        index_params: dict[str, int] | None = None,
        min_recall: float | None = None,
        consistency_level: str = "Session",
        server: str | None = None,
        server_model: str | None = None,
        embeddings_from_server: bool = False,
        token: str | None = None,
        secure: bool | None = None,
        ca_pem_path: str | None = None,
        client_pem_path: str | None = None,
        client_key_path: str | None = None,
        server_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"Unsupported metric {metric!r}. Supported values are {tuple(METRICS)}")
        if index_type is not None and index_type.upper() not in INDEX_TYPES:
            raise ValueError(f"Unsupported index_type {index_type!r}. Supported values are {INDEX_TYPES}")
        if consistency_level not in CONSISTENCY_LEVELS:
            raise ValueError(
                f"Unsupported consistency_level {consistency_level!r}. Supported values are {CONSISTENCY_LEVELS}"
            )
        super().__init__(**kwargs)
        self.collection_name = collection_name
        self.metric = metric
        self.index_type = index_type.upper() if index_type else None
        self.index_params = dict(index_params) if index_params else None
        self.min_recall = min_recall
        self.consistency_level = consistency_level
        self.server = server or DEFAULT_SERVER
        self.server_model = server_model
        self.embeddings_from_server = bool(embeddings_from_server)
        # Kept private so they are never written to the database (as FiftyOne's Milvus backend does).
        self._token = token
        self._secure = secure
        self._ca_pem_path = ca_pem_path
        self._client_pem_path = client_pem_path
        self._client_key_path = client_key_path
        self._server_name = server_name

    @property
    def method(self) -> str:
        return BACKEND

    @property
    def max_k(self) -> int:
        return MAX_K

    @property
    def supports_least_similarity(self) -> bool:
        return True

    @property
    def supported_aggregations(self) -> tuple[str, ...]:
        return ("mean",)

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value

    @property
    def secure(self) -> bool | None:
        return self._secure

    @secure.setter
    def secure(self, value: bool | None) -> None:
        self._secure = value

    @property
    def ca_pem_path(self) -> str | None:
        return self._ca_pem_path

    @ca_pem_path.setter
    def ca_pem_path(self, value: str | None) -> None:
        self._ca_pem_path = value

    @property
    def client_pem_path(self) -> str | None:
        return self._client_pem_path

    @client_pem_path.setter
    def client_pem_path(self, value: str | None) -> None:
        self._client_pem_path = value

    @property
    def client_key_path(self) -> str | None:
        return self._client_key_path

    @client_key_path.setter
    def client_key_path(self, value: str | None) -> None:
        self._client_key_path = value

    @property
    def server_name(self) -> str | None:
        return self._server_name

    @server_name.setter
    def server_name(self, value: str | None) -> None:
        self._server_name = value

    def load_credentials(
        self,
        server: str | None = None,
        token: str | None = None,
        secure: bool | None = None,
        ca_pem_path: str | None = None,
        client_pem_path: str | None = None,
        client_key_path: str | None = None,
        server_name: str | None = None,
    ) -> None:
        """Connection settings for `load_brain_results`: keyword arguments, else the brain config/env."""
        self._load_parameters(
            server=server,
            token=token,
            secure=secure,
            ca_pem_path=ca_pem_path,
            client_pem_path=client_pem_path,
            client_key_path=client_key_path,
            server_name=server_name,
        )


class LookalikeSimilarity(fbs.Similarity):
    """The lookalike similarity factory."""

    def ensure_requirements(self) -> None:
        """Stops a run whose model FiftyOne chose itself (the backend was imported too late to embed on the
        server), before any brain run, collection or embedding exists. grpcio and the stubs come with lookalike."""
        if self.config.model is not None:
            chosen = model_fiftyone_chose()
            if chosen is not None:
                raise ValueError(chosen_model_message(chosen))

    def ensure_usage_requirements(self) -> None:
        pass

    def initialize(self, samples: Any, brain_key: str | None) -> LookalikeSimilarityIndex:
        return LookalikeSimilarityIndex(samples, self.config, brain_key, backend=self)


@dataclass(frozen=True)
class _Queries:
    """Parsed queries that only the server can turn into vectors: image bytes or text prompts."""

    kind: str  # "images" or "text"
    items: list[Any]


class LookalikeSimilarityIndex(fbs.SimilarityIndex, fbs.DuplicatesMixin):
    """A similarity index kept in one lookalike collection.

    Scores: ``sort_by_similarity(dist_field=...)`` stores the server's exact score (cosine similarity,
    inner product or squared Euclidean distance), as FiftyOne's Milvus backend stores Milvus' score.
    ``find_duplicates``/``find_unique`` thresholds are distances: ``1 - cosine``, ``1 - inner product``, or
    the Euclidean distance.

    Args:
        samples: the :class:`fiftyone.core.collections.SampleCollection` used
        config: the :class:`LookalikeSimilarityConfig` used
        brain_key: the brain key
        backend (None): a :class:`LookalikeSimilarity` instance
    """

    def __init__(self, samples: Any, config: LookalikeSimilarityConfig, brain_key: str | None, backend=None) -> None:
        self._client = _connect(config)
        self._as_distances = False
        self._neighbors: dict[str, list[tuple[str, float]]] = {}
        self._neighbors_k: dict[str, int] = {}
        self._indexed: tuple[np.ndarray, np.ndarray | None] | None = None  # (sample ids, label ids) held
        super().__init__(samples, config, brain_key, backend=backend)
        fbs.DuplicatesMixin.__init__(self)
        self._initialize()

    def _initialize(self) -> None:
        # One call at creation and at `load_brain_results` alike, so that a missing server fails here, as
        # FiftyOne's Milvus backend fails when it connects, not at the first search: the listing for a new
        # run's name, else the one collection's description (cheaper: the listing describes every collection).
        self._name_is_ours = self.config.collection_name is None  # chosen here, so another may replace it
        if not self._name_is_ours:
            self._describe()
        else:
            with self._errors():
                names = [c.name for c in self._client.list_collections()]
            slug = re.sub(r"[^0-9a-z]+", "_", fou.to_slug(self._samples._root_dataset.name)).strip("_")
            self.config.collection_name = _unique_name(COLLECTION_PREFIX + slug, names)
            self.save_config()

    # Connection and collection

    @property
    def client(self) -> Client:
        """The :class:`lookalike.Client` talking to the server."""
        return self._client

    @property
    def collection_name(self) -> str:
        return self.config.collection_name

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Server errors as the exceptions FiftyOne users expect, naming the server."""
        try:
            yield
        except LookalikeClientError as e:
            if e.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise ConnectionError(_unreachable(self.config.server, self.key, e.details)) from None
            if e.code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS", "OUT_OF_RANGE"):
                raise ValueError(f"lookalike server at {self.config.server}: {e.details}") from None
            raise

    def _describe(self) -> CollectionInfo | None:
        """The collection's description, or None if it does not exist (yet)."""
        try:
            return self._client.describe_collection(self.collection_name)
        except LookalikeClientError as e:
            if e.code == "NOT_FOUND":
                return None
            with self._errors():
                raise

    def _ensure_collection(self, dimension: int = 0, vectors_only: bool = False) -> CollectionInfo:
        """The index's collection, created on first use: of the server's model, or `vectors_only` for vectors
        computed elsewhere (of any `dimension`)."""
        info = self._describe()
        if info is None:
            info = self._create_collection(dimension, vectors_only)
            logger.info("Created lookalike collection '%s' on %s", info.name, self.config.server)
        elif info.metric != METRICS[self.config.metric]:
            raise ValueError(
                f"lookalike collection {info.name!r} uses metric {info.metric!r}, not "
                f"{METRICS[self.config.metric]!r} ({self.config.metric!r}): pass the collection's metric"
            )
        return info

    def _create_collection(self, dimension: int, vectors_only: bool) -> CollectionInfo:
        """Creates the collection. A name this index chose that Milvus already holds outside lookalike (the
        server's listing hides such collections: FiftyOne's Milvus backend's, say) moves on to the next free one."""
        taken: list[str] = []
        while True:
            try:
                return self._client.create_collection(
                    self.collection_name,
                    METRICS[self.config.metric],
                    self.config.index_type or "",
                    self.config.index_params,
                    self.config.min_recall or 0.0,
                    dimension,
                    vectors_only=vectors_only,
                )
            except LookalikeClientError as e:
                if e.code != "ALREADY_EXISTS":
                    with self._errors():
                        raise
                if not self._name_is_ours:
                    raise ValueError(
                        f"collection {self.collection_name!r} already exists in the Milvus behind the lookalike "
                        f"server at {self.config.server}, but lookalike did not create it (FiftyOne's Milvus "
                        "backend may have): pass another collection_name, or none to let the backend choose one"
                    ) from None
                taken.append(self.collection_name)
                if len(taken) >= _NAME_TRIES:
                    raise ValueError(f"lookalike collections {taken[0]!r} to {taken[-1]!r} all exist already in "
                                     f"the Milvus behind {self.config.server}: pass a collection_name") from None
            with self._errors():
                names = [c.name for c in self._client.list_collections()]
            self.config.collection_name = _unique_name(taken[0], [*names, *taken])
            logger.info("Milvus already holds a collection named '%s' that lookalike did not create: using '%s'",
                        taken[-1], self.collection_name)
            self.save_config()

    def _adopt_server_model(self, info: CollectionInfo, declared: str) -> None:
        """Records the server model of a collection it embeds for, so image and text queries go to the server.
        `declared`: what claimed the vectors are the server's, for the error when the collection is vectors-only."""
        if not info.model:
            if declared:
                raise ValueError(
                    f"{declared} cannot be this server's: lookalike collection {info.name!r} holds "
                    f"{info.dimension}-d vectors computed elsewhere (vectors-only)"
                )
            return
        if self.config.server_model != info.model:
            self.config.server_model = info.model
            self.save_config()

    def _write_field(self, vectors: np.ndarray, sample_ids: Sequence[str], label_ids: Sequence[str] | None) -> None:
        """Writes vectors to the run's embeddings field, as FiftyOne's sklearn backend does in add_to_index."""
        if len(vectors):
            fbu.add_embeddings(self._samples, vectors, list(sample_ids),
                               None if label_ids is None else list(label_ids),
                               self.config.embeddings_field, patches_field=self.config.patches_field)

    @property
    def sample_ids(self) -> np.ndarray:
        """The sample ids the index holds, among its dataset's: so `index_size` and `missing_size` leave out
        what was never embedded (a missing file, say). Asked of the server by id, without vectors; kept until
        the index changes or `reload()`."""
        return self._indexed_ids()[0]

    @property
    def label_ids(self) -> np.ndarray | None:
        """The label ids the index holds, for a patches index (aligned with `sample_ids`); else None."""
        return self._indexed_ids()[1]

    def _indexed_ids(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._indexed is None:
            dataset = self._samples._root_dataset
            if self.config.patches_field is None:
                sample_ids, label_ids = np.array(dataset.values("id"), dtype=str), None
            else:
                sample_ids, label_ids = (np.array(a, dtype=str) for a in
                                         fbu._get_patch_ids(dataset, self.config.patches_field))
            ids = sample_ids if label_ids is None else label_ids
            held = self._existing(ids) if len(ids) and self._describe() is not None else set()
            keep = np.array([i in held for i in ids], dtype=bool)
            self._indexed = (sample_ids[keep], None if label_ids is None else label_ids[keep])
        return self._indexed

    def reload(self) -> None:
        self._indexed = None
        super().reload()

    @property
    def total_index_size(self) -> int:
        info = self._describe()
        return 0 if info is None else info.row_count

    def cleanup(self) -> None:
        """Drops the collection from the server."""
        try:
            self._client.drop_collection(self.collection_name)
        except LookalikeClientError as e:
            if e.code != "NOT_FOUND":
                with self._errors():
                    raise
        self._forget_neighbors()
        self._indexed = None

    def delete(self) -> None:
        """Drops the collection from the server, as `cleanup()` does: the last step of Milvus' guide "Conduct
        Vision Searches with Milvus and FiftyOne" (`milvus_index.delete()`), which no FiftyOne backend has.
        The brain run stays on the dataset: `dataset.delete_brain_run(key)` removes it."""
        self.cleanup()

    # Adding and removing

    def add_to_index(
        self,
        embeddings: np.ndarray,
        sample_ids: Sequence[str],
        label_ids: Sequence[str] | None = None,
        overwrite: bool = True,
        allow_existing: bool = True,
        warn_existing: bool = False,
        reload: bool = True,
        batch_size: int | None = None,
    ) -> None:
        """Stores the given vectors under the sample or label ids (and in the run's embeddings field, if any).

        A new collection for them is vectors-only (the server never embeds queries for it) unless the run
        declares ``embeddings_from_server=True`` or its vectors came from `compute_embeddings` on the server."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        sample_ids = [str(i) for i in sample_ids]
        label_ids = None if label_ids is None else [str(i) for i in label_ids]
        ids = label_ids if label_ids is not None else sample_ids
        if embeddings.ndim != 2 or len(embeddings) != len(ids):
            raise ValueError(f"expected {len(ids)} embeddings as a 2-D array, got shape {embeddings.shape}")
        info = self._ensure_collection(embeddings.shape[1], vectors_only=not self.config.embeddings_from_server)
        if self.config.embeddings_from_server:
            self._adopt_server_model(info, f"embeddings_from_server=True, but the {embeddings.shape[1]}-d embeddings")
        if embeddings.shape[1] != info.dimension:
            holds = f"of model {info.model!r}" if info.model else "computed elsewhere"
            raise ValueError(
                f"embeddings have {embeddings.shape[1]} dimensions, but lookalike collection {info.name!r} holds "
                f"{info.dimension}-d vectors {holds}"
            )
        keep = self._keep_existing(ids, overwrite, allow_existing, warn_existing)
        items = (
            (ids[n], embeddings[n], {"sample_id": sample_ids[n]} if label_ids is not None else None)
            for n in range(len(ids))
            if keep is None or n in keep
        )
        with self._errors():
            failed = [r for r in self._client.ingest(items, self.collection_name) if not r.ok]
        self._forget_neighbors()
        self._indexed = None
        if self.config.embeddings_field is not None:
            not_stored = {r.id for r in failed}
            stored = [n for n in range(len(ids)) if (keep is None or n in keep) and ids[n] not in not_stored]
            self._write_field(embeddings[stored], [sample_ids[n] for n in stored],
                              None if label_ids is None else [label_ids[n] for n in stored])
        if failed:
            raise ValueError(
                f"{len(failed)} of {len(ids)} embeddings were not stored, e.g. {failed[0].id}: {failed[0].message}"
            )
        if reload:
            self.reload()

    def _keep_existing(
        self, ids: Sequence[str], overwrite: bool, allow_existing: bool, warn_existing: bool
    ) -> set[int] | None:
        """Positions of ids to store (None: all), after FiftyOne's overwrite/allow/warn rules."""
        if overwrite and allow_existing and not warn_existing:
            return None  # Ingest upserts: existing ids are replaced
        existing = self._existing(ids)
        if existing:
            if not allow_existing:
                example = next(iter(existing))
                raise ValueError(f"Found {len(existing)} IDs (eg {example}) that already exist in the index")
            if warn_existing:
                action = "Overwriting" if overwrite else "Skipping"
                logger.warning("%s %d IDs that already exist in the index", action, len(existing))
        if overwrite:
            return None
        return {n for n, i in enumerate(ids) if i not in existing}

    def _existing(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self._errors():
            for batch in _batches(list(ids), _IDS_PER_CALL):
                found.update(self._client.get(batch, self.collection_name, vectors=False, metadata=False))
        return found

    def add_samples(
        self,
        samples: Any,
        patches_field: str | None = None,
        force_square: bool = False,
        alpha: float | None = None,
        skip_failures: bool = True,
        progress: Any = None,
    ) -> list[IngestResult]:
        """Streams the samples' images (or their object patches) to the server, which embeds and stores them.

        Every failure is logged with its sample and reason, and the rest are stored regardless; with
        ``skip_failures=False`` a ValueError lists them at the end. Returns the failures.
        """
        patches_field = patches_field or self.config.patches_field
        info = self._ensure_collection()
        if not info.model:
            raise ValueError(
                f"lookalike collection {info.name!r} is vectors-only: it holds {info.dimension}-d vectors computed "
                "elsewhere, so the server cannot embed images for it. Add vectors with add_to_index(), or compute "
                "a new index without embeddings= to let the server embed"
            )
        self._adopt_server_model(info, "")
        total, items, local_failures = _image_items(samples, patches_field, force_square, alpha)
        what = "patches" if patches_field else "samples"
        logger.info("Embedding %d %s on the lookalike server at %s...", total, what, self.config.server)
        failures: list[IngestResult] = []
        stored: list[str] = []
        with self._errors(), fou.ProgressBar(total=total, progress=progress, iters_str=what) as bar:
            for result in self._client.ingest(items, self.collection_name):
                (stored.append(result.id) if result.ok else failures.append(result))
                bar.update()
        failures.extend(local_failures)
        self._forget_neighbors()
        self._indexed = None
        if self.config.embeddings_field is not None and stored:
            # FiftyOne writes the field in add_to_index; here the server made the vectors, so read them back.
            patches = patches_field is not None
            for batch in _batches(stored, _IDS_PER_CALL):
                vectors, sample_ids, label_ids = self.get_embeddings(
                    label_ids=batch if patches else None, sample_ids=None if patches else batch)
                self._write_field(vectors, sample_ids, label_ids)
        for failure in failures:
            logger.warning("lookalike could not embed %s: %s", failure.id, failure.message)
        if failures:
            logger.warning("%d of %d %s were not embedded; the rest are stored", len(failures), total, what)
            if not skip_failures:
                listed = "; ".join(f"{f.id}: {f.message}" for f in failures[:5])
                raise ValueError(f"{len(failures)} of {total} {what} were not embedded: {listed}")
        self.reload()
        return failures

    def compute_embeddings(
        self,
        samples: Any,
        model: Any = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
        skip_failures: bool = True,
        skip_existing: bool = False,
        warn_existing: bool = False,
        force_square: bool = False,
        alpha: float | None = None,
        progress: Any = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Embeddings of the samples (or patches) without storing them: by ``model``, the run's model, or
        else the server."""
        if model is not None or self.config.model is not None:
            return super().compute_embeddings(
                samples, model=model, batch_size=batch_size, num_workers=num_workers, skip_failures=skip_failures,
                skip_existing=skip_existing, warn_existing=warn_existing, force_square=force_square, alpha=alpha,
                progress=progress,
            )
        patches_field = self.config.patches_field
        _, items, local_failures = _image_items(samples, patches_field, force_square, alpha)
        vectors, sample_ids, label_ids = [], [], []
        for batch in _batches(list(items), batch_size or 32):
            for (item_id, _, metadata), vector in zip(batch, self._embed(batch), strict=True):
                if vector is None:
                    continue
                vectors.append(vector)
                sample_ids.append(metadata["sample_id"] if metadata else item_id)
                label_ids.append(item_id)
        if local_failures and not skip_failures:
            raise ValueError(f"{local_failures[0].id}: {local_failures[0].message}")
        info = self._ensure_collection()
        # These are the server's vectors: add_to_index() with them keeps the collection's model for queries.
        self._adopt_server_model(info, "")
        dimension = info.dimension
        embeddings = np.stack(vectors) if vectors else np.zeros((0, dimension), np.float32)
        return embeddings, np.array(sample_ids), np.array(label_ids) if patches_field else None

    def _embed(self, batch: Sequence[tuple[str, Any, Any]]) -> list[np.ndarray | None]:
        """Server embeddings of a batch of images; None for an image the server rejects (logged)."""
        images = [Path(c).read_bytes() if isinstance(c, Path) else c for _, c, _ in batch]
        try:
            return list(self._client.embed(images))
        except LookalikeClientError as e:
            if e.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                with self._errors():
                    raise
        vectors: list[np.ndarray | None] = []
        for (item_id, _, _), image in zip(batch, images, strict=True):
            try:
                vectors.append(self._client.embed([image])[0])
            except LookalikeClientError as e:
                logger.warning("lookalike could not embed %s: %s", item_id, e.details)
                vectors.append(None)
        return vectors

    def remove_from_index(
        self,
        sample_ids: Sequence[str] | None = None,
        label_ids: Sequence[str] | None = None,
        allow_missing: bool = True,
        warn_missing: bool = False,
        reload: bool = True,
    ) -> None:
        if label_ids is not None:
            ids = [str(i) for i in label_ids]
        elif self.config.patches_field is not None and sample_ids is not None:
            ids = self._label_ids_of(sample_ids)
        else:
            ids = [str(i) for i in sample_ids or ()]
        if not allow_missing or warn_missing:
            existing = self._existing(ids)
            missing = [i for i in ids if i not in existing]
            if missing:
                if not allow_missing:
                    raise ValueError(f"Found {len(missing)} IDs (eg {missing[0]}) that are not present in the index")
                logger.warning("Ignoring %d IDs that are not present in the index", len(missing))
                ids = [i for i in ids if i in existing]
        with self._errors():
            for batch in _batches(ids, _IDS_PER_CALL):
                self._client.delete(batch, self.collection_name)
        if self.config.embeddings_field is not None and ids:  # as FiftyOne's sklearn backend does
            patches = self.config.patches_field is not None
            fbu.remove_embeddings(self._samples, self.config.embeddings_field, sample_ids=None if patches else ids,
                                  label_ids=ids if patches else None, patches_field=self.config.patches_field)
        self._forget_neighbors()
        self._indexed = None
        if reload:
            self.reload()

    # Reading vectors back

    def get_embeddings(
        self,
        sample_ids: str | Sequence[str] | None = None,
        label_ids: str | Sequence[str] | None = None,
        allow_missing: bool = True,
        warn_missing: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Stored vectors by sample or label ids; with no ids, those of every sample/label in the current view."""
        patches_field = self.config.patches_field
        if label_ids is not None and patches_field is None:
            raise ValueError("This index does not support label IDs")
        if label_ids is not None and sample_ids is not None:
            logger.warning("Ignoring sample IDs when label IDs are provided")
        sample_ids = [sample_ids] if etau.is_str(sample_ids) else sample_ids
        label_ids = [label_ids] if etau.is_str(label_ids) else label_ids
        explicit = sample_ids is not None or label_ids is not None
        if patches_field is None:
            ids = list(sample_ids) if sample_ids is not None else list(self.current_sample_ids)
        elif label_ids is not None:
            ids = list(label_ids)
        elif sample_ids is not None:
            ids = self._label_ids_of(sample_ids)
        else:
            ids = list(self.current_label_ids)

        vectors, found_ids, found_sample_ids = [], [], []
        with self._errors():
            for batch in _batches([str(i) for i in ids], _IDS_PER_CALL):
                rows = self._client.get(batch, self.collection_name, vectors=True, metadata=patches_field is not None)
                for item_id in batch:
                    if item_id in rows:
                        vector, metadata = rows[item_id]
                        vectors.append(vector)
                        found_ids.append(item_id)
                        found_sample_ids.append(metadata["sample_id"] if patches_field else item_id)
        missing = len(ids) - len(found_ids)
        if missing and explicit:
            if not allow_missing:
                raise ValueError(f"Found {missing} IDs that do not exist in the index")
            if warn_missing:
                logger.warning("Skipping %d IDs that do not exist in the index", missing)
        dimension = vectors[0].shape[0] if vectors else 0
        embeddings = np.stack(vectors) if vectors else np.zeros((0, dimension), np.float32)
        return embeddings, np.array(found_sample_ids), np.array(found_ids) if patches_field else None

    def _label_ids_of(self, sample_ids: Sequence[str]) -> list[str]:
        """The ids of the patches of the given samples, from the dataset."""
        samples = self._samples.select([str(i) for i in sample_ids])
        _, path = samples._get_label_field_path(self.config.patches_field, "id")
        return [str(i) for i in samples.values(path, unwind=True) if i is not None]

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
                raise ValueError("The lookalike backend searches one text prompt at a time")
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
            for batch in _batches(list(queries), per_call):
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

    @classmethod
    def _from_dict(cls, d: dict[str, Any], samples: Any, config: LookalikeSimilarityConfig, brain_key: str):
        return cls(samples, config, brain_key)


# Helpers


def _distance(score: float, metric: str) -> float:
    """A server score as a distance: 1 - cosine, 1 - inner product, or Euclidean (from squared L2)."""
    if metric == "euclidean":
        return float(np.sqrt(max(score, 0.0)))
    return 1.0 - score


def _score(distance: float, metric: str) -> float:
    """The inverse of `_distance`."""
    return distance * distance if metric == "euclidean" else 1.0 - distance


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unique_name(root: str, taken: Sequence[str]) -> str:
    taken = set(taken)
    name, n = root, 1
    while name in taken:
        n += 1
        name = f"{root}_{n}"
    return name


def _is_object_id(value: Any) -> bool:
    return etau.is_str(value) and ObjectId.is_valid(value)


def _is_image_file(value: Any) -> bool:
    path = Path(value)
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _patches(label: Any) -> list[tuple[str, fol.Detection]]:
    """(label id, box) of each object in a Detection(s) or Polyline(s) field value."""
    if label is None:
        return []
    if isinstance(label, fol.Detections):
        return [(d.id, d) for d in label.detections]
    if isinstance(label, fol.Detection):
        return [(label.id, label)]
    if isinstance(label, fol.Polylines):
        return [(p.id, p.to_detection()) for p in label.polylines]
    if isinstance(label, fol.Polyline):
        return [(label.id, label.to_detection())]
    raise ValueError(f"Unsupported patches label type {type(label).__name__}: use Detection(s) or Polyline(s)")


def _image_items(
    samples: Any, patches_field: str | None, force_square: bool, alpha: float | None
) -> tuple[int, Iterator[tuple[str, Any, dict[str, Any] | None]], list[IngestResult]]:
    """(count, lazy (id, image path | patch bytes, metadata) items, failures found while cropping)."""
    if patches_field is None:
        ids, paths = samples.values(["id", "filepath"])
        return len(ids), ((i, Path(p), None) for i, p in zip(ids, paths, strict=True)), []

    import fiftyone.utils.patches as foup

    ids, paths, labels = samples.values(["id", "filepath", patches_field])
    boxes = [_patches(label) for label in labels]
    failures: list[IngestResult] = []

    def crops() -> Iterator[tuple[str, bytes, dict[str, Any]]]:
        for sample_id, path, objects in zip(ids, paths, boxes, strict=True):
            if not objects:
                continue
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except (OSError, ValueError) as e:
                failures.extend(IngestResult(i, "INVALID_ARGUMENT", f"cannot read {path}: {e}") for i, _ in objects)
                continue
            for label_id, box in objects:
                patch = foup.extract_patch(pixels, box, force_square=force_square, alpha=alpha)
                if patch.size == 0:
                    failures.append(IngestResult(label_id, "INVALID_ARGUMENT", f"empty box in {path}"))
                    continue
                buffer = io.BytesIO()
                Image.fromarray(patch).save(buffer, format="PNG", compress_level=1)
                yield label_id, buffer.getvalue(), {"sample_id": sample_id}

    return sum(len(b) for b in boxes), crops(), failures


def _unreachable(server: str, brain_key: str | None, details: str) -> str:
    """What a FiftyOne user reads when the server does not answer: where it was looked for, how to fix it."""
    said = details.split("gRPC said: ", 1)[-1]  # the client's own advice names CLI flags: keep gRPC's words only
    run = f" (brain run {brain_key!r})" if brain_key else ""
    return (
        f"no lookalike server answers at {server}{run}: start one with `lookalike serve`, or point to a running "
        "one with server='HOST:PORT' (in compute_similarity or load_brain_results), the environment variable "
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER, or 'server' under similarity_backends.lookalike in "
        f"FiftyOne's brain config. gRPC said: {said}"
    )


def _connect(config: LookalikeSimilarityConfig) -> Client:
    """A client for the configured server: plain, or with TLS when asked or when certificates are given."""
    return Client(
        config.server, token=config.token or None, ca_cert=config.ca_pem_path or None,
        client_cert=config.client_pem_path or None, client_key=config.client_key_path or None,
        secure=bool(config.secure), server_name=config.server_name or None,
    )


# The import-time step: `compute_similarity` with no model embeds on the server, and the backend is registered
# in this process's brain config (lookalike.fiftyone_registration; it imports nothing from here).
install(LookalikeSimilarityConfig)
