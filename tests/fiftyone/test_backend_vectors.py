"""The FiftyOne backend with vectors that the lookalike server did not compute: embeddings brought by the user
(stored exactly as given; sorts by ids, vectors, their mean, reversed and with a distance field; views restrict
the candidates; another dimension gets a vectors-only collection; add, remove, get and cleanup) and a FiftyOne
model run on the client, as with FiftyOne's Milvus backend. Exactness is checked against numpy
(tests/fiftyone/oracle.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.core.models as fom
import numpy as np
import pytest
from fiftyone import ViewField as F
from PIL import Image

from lookalike import Client
from lookalike.fiftyone_brain import LookalikeSimilarityIndex
from tests.conftest import ServerProcess
from tests.fiftyone.oracle import DIM, exact_top, unit

# Embeddings brought by the user


@pytest.fixture(scope="module")
def ip_data(server: ServerProcess) -> Iterator[tuple[fo.Dataset, np.ndarray, LookalikeSimilarityIndex]]:
    """1,200 samples with random vectors, indexed by inner product (stored exactly as given). The tests compare
    whole top-k lists with exact search, so the index is asked for recall 1.0, not the default 0.99 that lets
    one neighbour in a hundred go (random 1280-d rows are HNSW's hardest data)."""
    rng = np.random.default_rng(7)
    embeddings = rng.standard_normal((1200, DIM)).astype(np.float32)
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{n:04d}.jpg", n=n) for n in range(len(embeddings))])
    index = fob.compute_similarity(
        ds, embeddings=embeddings, brain_key="ip", backend="lookalike", metric="dotproduct",
        index_type="HNSW", server=server.address, min_recall=1.0,
    )
    yield ds, embeddings, index
    index.cleanup()
    ds.delete()


def test_embeddings_are_stored_as_given(ip_data: tuple[fo.Dataset, np.ndarray, LookalikeSimilarityIndex]) -> None:
    ds, embeddings, index = ip_data
    ids = ds.values("id")
    stored, sample_ids, _ = index.get_embeddings(ids[:50])
    assert list(sample_ids) == ids[:50]
    np.testing.assert_array_equal(stored, embeddings[:50])
    everything, all_ids, _ = index.get_embeddings()  # no ids: every sample of the index's dataset
    assert list(all_ids) == ids
    np.testing.assert_array_equal(everything, embeddings)
    assert index.total_index_size == 1200
    assert index.config.server_model is None


def test_sort_by_ids_vectors_mean_reverse_and_dist_field(
    ip_data: tuple[fo.Dataset, np.ndarray, LookalikeSimilarityIndex],
) -> None:
    ds, embeddings, _ = ip_data
    ids = ds.values("id")
    rng = np.random.default_rng(1)
    vector = rng.standard_normal(DIM).astype(np.float32)
    vectors = rng.standard_normal((3, DIM)).astype(np.float32)

    def ranked(query, **kwargs) -> list[str]:
        return ds.sort_by_similarity(query, brain_key="ip", **kwargs).values("id")

    assert ranked(ids[5], k=10) == exact_top(embeddings, ids, embeddings[5], 10)
    assert ranked(ids[:4], k=10) == exact_top(embeddings, ids, embeddings[:4].mean(axis=0), 10)
    assert ranked(vector, k=200) == exact_top(embeddings, ids, vector, 200)
    assert ranked(vectors, k=10) == exact_top(embeddings, ids, vectors.mean(axis=0), 10)
    assert ranked(ids[5], k=10, reverse=True) == exact_top(embeddings, ids, embeddings[5], 10, reverse=True)

    view = ds.sort_by_similarity(vector, brain_key="ip", k=7, dist_field="score")
    expected = np.sort(embeddings @ vector)[::-1][:7]
    np.testing.assert_allclose(view.values("score"), expected, rtol=1e-4)


def test_views_restrict_the_candidates(ip_data: tuple[fo.Dataset, np.ndarray, LookalikeSimilarityIndex]) -> None:
    ds, embeddings, index = ip_data
    ids = ds.values("id")
    for view in (ds.match(F("n") % 7 == 0), ds.match(F("n") >= 100)):  # 172 and 1,100 ids
        inside = np.array(view.values("n"))
        ranked = view.sort_by_similarity(ids[3], brain_key="ip", k=25).values("id")
        assert ranked == exact_top(embeddings[inside], [ids[n] for n in inside], embeddings[3], 25)
    small = ds.match(F("n") < 30)
    everything = small.sort_by_similarity(ids[40], brain_key="ip").values("id")  # k=None: the whole view
    assert everything == exact_top(embeddings[:30], ids[:30], embeddings[40], 30)
    with pytest.raises(ValueError, match="k<=16384"):
        index.sort_by_similarity(ids[0], k=20000)


def test_embeddings_of_another_dimension_get_a_vectors_only_collection(
    vectors_dataset: fo.Dataset, server: ServerProcess
) -> None:
    """BYO embeddings of any size (here 64-d, not the server model's 1280): stored and searched exactly; the
    server cannot embed images for them, and says so; vectors of a third size are refused."""
    ids = vectors_dataset.values("id")
    embeddings = unit(np.random.default_rng(8).standard_normal((300, 64))).astype(np.float32)
    index = fob.compute_similarity(
        vectors_dataset, embeddings=embeddings, backend="lookalike", server=server.address,
        collection_name="t_fiftyone_64d", brain_key="b64", metric="dotproduct",
    )
    try:
        with Client(server.address) as client:
            info = client.describe_collection("t_fiftyone_64d")
        assert (info.dimension, info.model, info.row_count) == (64, "", 300)
        ranked = vectors_dataset.sort_by_similarity(ids[9], brain_key="b64", k=10).values("id")
        assert ranked == exact_top(embeddings, ids, embeddings[9], 10)
        with pytest.raises(ValueError, match="computed outside the lookalike server"):
            vectors_dataset.sort_by_similarity("a photo of a cat", brain_key="b64", k=5)
        with pytest.raises(ValueError, match=r"32 dimensions.*64-d vectors computed elsewhere"):
            index.add_to_index(np.ones((1, 32), np.float32), ids[:1])
    finally:
        index.cleanup()
        vectors_dataset.delete_brain_run("b64")


def test_add_remove_get_and_cleanup(
    vectors_dataset: fo.Dataset, server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    ids = vectors_dataset.values("id")
    embeddings = unit(np.random.default_rng(3).standard_normal((300, DIM))).astype(np.float32)
    index = fob.compute_similarity(
        vectors_dataset.limit(200), embeddings=embeddings[:200], brain_key="edit", backend="lookalike",
        server=server.address,
    )
    try:
        assert index.total_index_size == 200
        index.add_to_index(embeddings[200:], ids[200:])
        assert index.total_index_size == 300
        with pytest.raises(ValueError, match="already exist"):
            index.add_to_index(embeddings[:2], ids[:2], overwrite=False, allow_existing=False)
        with caplog.at_level(logging.WARNING, logger="lookalike.fiftyone_brain"):
            index.add_to_index(-embeddings[:2], ids[:2], overwrite=False, warn_existing=True)
        assert "Skipping 2 IDs that already exist" in caplog.text
        np.testing.assert_allclose(index.get_embeddings(ids[:2])[0], embeddings[:2], atol=1e-6)
        index.add_to_index(-embeddings[:2], ids[:2])  # overwrite
        np.testing.assert_allclose(index.get_embeddings(ids[:2])[0], -embeddings[:2], atol=1e-6)

        index.remove_from_index(ids[:10])
        assert index.total_index_size == 290
        _, found_ids, _ = index.get_embeddings(ids[:12])
        assert list(found_ids) == ids[10:12]
        with pytest.raises(ValueError, match="do not exist"):
            index.get_embeddings(ids[:12], allow_missing=False)
        with pytest.raises(ValueError, match="not present"):
            index.remove_from_index(ids[:12], allow_missing=False)
        assert vectors_dataset.sort_by_similarity(ids[20], brain_key="edit", k=300).count() == 290
    finally:
        index.cleanup()
    assert index.total_index_size == 0
    with Client(server.address) as client:
        assert index.config.collection_name not in [c.name for c in client.list_collections()]
    vectors_dataset.delete_brain_run("edit")
    assert vectors_dataset.list_brain_runs() == []


# A FiftyOne model on the client, as with the Milvus backend


class ThumbnailModel(fom.Model, fom.EmbeddingsMixin):
    """A tiny real FiftyOne model: the 32x40 greyscale thumbnail as a 1280-d vector."""

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return False

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        pass

    @property
    def has_embeddings(self) -> bool:
        return True

    def predict(self, arg: np.ndarray) -> None:
        raise NotImplementedError("embeddings only")

    def embed(self, arg: np.ndarray) -> np.ndarray:
        thumbnail = Image.fromarray(np.asarray(arg)).convert("L").resize((40, 32), Image.BILINEAR)
        return np.asarray(thumbnail, dtype=np.float32).ravel() / 255.0

    def embed_all(self, args) -> np.ndarray:
        return np.stack([self.embed(a) for a in args])


def test_a_local_model_computes_on_the_client(dataset: fo.Dataset, server: ServerProcess, photos_dir: Path) -> None:
    model = ThumbnailModel()
    index = fob.compute_similarity(dataset, model=model, brain_key="local", backend="lookalike",
                                   metric="euclidean", server=server.address)
    try:
        stored, sample_ids, _ = index.get_embeddings(dataset.values("id"))
        for sample_id, vector in zip(sample_ids, stored, strict=True):
            with Image.open(dataset[sample_id].filepath) as image:
                np.testing.assert_allclose(vector, model.embed(np.asarray(image)), atol=1e-5)
        assert index.config.server_model is None
        with pytest.raises(ValueError, match="computed outside the lookalike server"):
            index.sort_by_similarity(str(photos_dir / "coffee.jpg"), k=3)
        query = dataset.first().id
        ranked = dataset.sort_by_similarity(query, brain_key="local", k=5, dist_field="d")
        squared = ((stored - stored[list(sample_ids).index(query)]) ** 2).sum(axis=1)
        assert ranked.values("id") == [sample_ids[i] for i in np.argsort(squared, kind="stable")[:5]]
        np.testing.assert_allclose(ranked.values("d"), np.sort(squared)[:5], rtol=1e-3, atol=1e-4)
    finally:
        index.cleanup()
