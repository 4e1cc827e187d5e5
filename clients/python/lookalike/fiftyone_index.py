"""The FiftyOne backend's index: one lookalike collection, its creation and name, the ids it holds, and
adding, removing and reading back vectors. Queries are in lookalike.fiftyone_search (a mixin), the images
sent to the server in lookalike.fiftyone_media."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import eta.core.utils as etau
import fiftyone.brain.internal.core.utils as fbu
import fiftyone.brain.similarity as fbs
import fiftyone.core.utils as fou
import numpy as np

from lookalike.client import Client, CollectionInfo, IngestResult, LookalikeClientError
from lookalike.fiftyone_common import IDS_PER_CALL, METRICS, batches, connect, logger, unreachable
from lookalike.fiftyone_media import image_items, server_embeddings
from lookalike.fiftyone_search import SimilaritySearch

if TYPE_CHECKING:
    from lookalike.fiftyone_brain import LookalikeSimilarityConfig


_NAME_TRIES = 100  # names tried when Milvus holds collections lookalike cannot see
# New runs' collections: FiftyOne's Milvus backend names its own `fiftyone_<dataset>` on a Milvus both may share.
COLLECTION_PREFIX = "lookalike_fiftyone_"


class LookalikeSimilarityIndex(SimilaritySearch, fbs.SimilarityIndex, fbs.DuplicatesMixin):
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
        self._client = connect(config)
        self._init_search()
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
                raise ConnectionError(unreachable(self.config.server, self.key, e.details)) from None
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
        """Records the server model of a collection it embeds for, so image and text queries go to the server,
        and whether that model embeds text (`supports_prompts`).
        `declared`: what claimed the vectors are the server's, for the error when the collection is vectors-only."""
        if not info.model:
            if declared:
                raise ValueError(
                    f"{declared} cannot be this server's: lookalike collection {info.name!r} holds "
                    f"{info.dimension}-d vectors computed elsewhere (vectors-only)"
                )
            return
        # FiftyOne's App and its stage read `supports_prompts` from the stored config: a text tower means the
        # server embeds prompts for this run, as a CLIP zoo model would on the client.
        self._supports_prompts = info.embeds_text
        if (self.config.server_model, self.config.supports_prompts) != (info.model, info.embeds_text):
            self.config.server_model = info.model
            self.config.supports_prompts = info.embeds_text
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
            for batch in batches(list(ids), IDS_PER_CALL):
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
        total, items, local_failures = image_items(samples, patches_field, force_square, alpha)
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
            for batch in batches(stored, IDS_PER_CALL):
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
        _, items, local_failures = image_items(samples, patches_field, force_square, alpha)
        with self._errors():
            vectors, sample_ids, label_ids = server_embeddings(self._client, items, batch_size or 32)
        if local_failures and not skip_failures:
            raise ValueError(f"{local_failures[0].id}: {local_failures[0].message}")
        info = self._ensure_collection()
        # These are the server's vectors: add_to_index() with them keeps the collection's model for queries.
        self._adopt_server_model(info, "")
        dimension = info.dimension
        embeddings = np.stack(vectors) if vectors else np.zeros((0, dimension), np.float32)
        return embeddings, np.array(sample_ids), np.array(label_ids) if patches_field else None

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
            for batch in batches(ids, IDS_PER_CALL):
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
            for batch in batches([str(i) for i in ids], IDS_PER_CALL):
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

    @classmethod
    def _from_dict(cls, d: dict[str, Any], samples: Any, config: LookalikeSimilarityConfig, brain_key: str):
        return cls(samples, config, brain_key)


# Helpers


def _unique_name(root: str, taken: Sequence[str]) -> str:
    taken = set(taken)
    name, n = root, 1
    while name in taken:
        n += 1
        name = f"{root}_{n}"
    return name
