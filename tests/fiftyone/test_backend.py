"""The FiftyOne backend against real FiftyOne, a real MongoDB and a real lookalike server.

Exactness is checked against numpy over the vectors the index holds; FiftyOne's own backends (sklearn
for duplicates, Milvus on `milvus-lite server` for search) are run beside ours on the same embeddings.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.core.models as fom
import numpy as np
import pytest
from fiftyone import ViewField as F
from fiftyone.brain.internal.core.milvus import MilvusSimilarity, MilvusSimilarityConfig
from PIL import Image

from lookalike import Client
from lookalike.fiftyone_brain import LookalikeSimilarityConfig, LookalikeSimilarityIndex
from lookalike.fiftyone_registration import CONFIG_CLS, register
from tests.conftest import ServerProcess, free_port
from tests.fiftyone.conftest import run_python

DIM = 1280  # the server's model (EfficientNet-Lite0)


def exact_top(embeddings: np.ndarray, ids: list[str], query: np.ndarray, k: int, reverse: bool = False) -> list[str]:
    """The numpy oracle: ids by inner product with the query, best first (or worst first)."""
    scores = embeddings @ query
    order = np.argsort(scores if reverse else -scores, kind="stable")
    return [ids[i] for i in order[:k]]


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


# The seed's recipe on photos, embedded by the server


@pytest.fixture(scope="module")
def photo_index(photos_dataset: fo.Dataset, server: ServerProcess) -> Iterator[LookalikeSimilarityIndex]:
    index = fob.compute_similarity(
        photos_dataset, brain_key="lookalike_index", backend="lookalike", server=server.address
    )
    yield index
    index.cleanup()
    photos_dataset.delete_brain_run("lookalike_index")


def test_recipe_sorts_like_exact_search(photos_dataset: fo.Dataset, photo_index: LookalikeSimilarityIndex) -> None:
    assert isinstance(photo_index, LookalikeSimilarityIndex)
    assert photo_index.total_index_size == len(photos_dataset) == 19
    query = photos_dataset.first()

    view = photos_dataset.sort_by_similarity(query.id, brain_key="lookalike_index", k=10)

    ids = view.values("id")
    assert ids[0] == query.id
    embeddings, sample_ids, label_ids = photo_index.get_embeddings(photos_dataset.values("id"))
    assert label_ids is None
    assert embeddings.shape == (19, DIM)
    sample_ids = list(sample_ids)
    assert ids == exact_top(embeddings, sample_ids, embeddings[sample_ids.index(query.id)], 10)


def test_server_embedded_the_image_files(
    photos_dataset: fo.Dataset, photo_index: LookalikeSimilarityIndex, lookalike_client: Client
) -> None:
    sample = photos_dataset.first()
    stored, _, _ = photo_index.get_embeddings([sample.id])
    np.testing.assert_allclose(stored[0], lookalike_client.embed([sample.filepath])[0], atol=1e-5)
    assert photo_index.config.server_model == lookalike_client.describe_collection().model
    assert photo_index.config.model is None


def test_query_by_image_file_bytes_and_text(
    photos_dataset: fo.Dataset, photo_index: LookalikeSimilarityIndex, photos_dir: Path
) -> None:
    chelsea = photos_dir / "chelsea.jpg"
    chelsea_id = photos_dataset.match(F("filepath") == str(chelsea)).first().id

    by_path = photos_dataset.sort_by_similarity(str(chelsea), brain_key="lookalike_index", k=3)
    by_bytes = photo_index.sort_by_similarity(chelsea.read_bytes(), k=3)

    assert by_path.values("id")[0] == chelsea_id
    assert by_bytes.values("id") == by_path.values("id")
    with pytest.raises(ValueError, match="has no text tower"):
        photos_dataset.sort_by_similarity("a tabby cat", brain_key="lookalike_index", k=3)


def test_query_inside_a_view(photos_dataset: fo.Dataset, photo_index: LookalikeSimilarityIndex) -> None:
    view = photos_dataset.take(8, seed=3)
    query = photos_dataset.first().id  # maybe outside the view: ids of the whole index are valid queries
    embeddings, sample_ids, _ = photo_index.get_embeddings(view.values("id"))
    full, _, _ = photo_index.get_embeddings([query])

    ranked = view.sort_by_similarity(query, brain_key="lookalike_index", k=5).values("id")

    assert ranked == exact_top(embeddings, list(sample_ids), full[0], 5)
    with photo_index.use_view(view):
        assert photo_index.index_size == 8
        assert photo_index.values("filepath") == view.values("filepath")
    assert photo_index.values("filepath") == photos_dataset.values("filepath")


def test_compute_embeddings_on_the_server(photos_dataset: fo.Dataset, photo_index: LookalikeSimilarityIndex) -> None:
    view = photos_dataset.limit(3)
    computed, sample_ids, _ = photo_index.compute_embeddings(view)
    stored, _, _ = photo_index.get_embeddings(view.values("id"))
    assert list(sample_ids) == view.values("id")
    np.testing.assert_allclose(computed, stored, atol=1e-5)


def test_brain_runs_are_listed_renamed_and_reloaded_in_a_new_process(
    photos_dataset: fo.Dataset, photo_index: LookalikeSimilarityIndex
) -> None:
    assert photos_dataset.list_brain_runs(type=fob.Similarity, method="lookalike") == ["lookalike_index"]
    assert photos_dataset.list_brain_runs(type="similarity", server_model="efficientnet-lite0") == ["lookalike_index"]
    assert photos_dataset.list_brain_runs(method="milvus") == []
    info = photos_dataset.get_brain_info("lookalike_index")
    assert info.config.cls == CONFIG_CLS
    assert info.config.collection_name == photo_index.config.collection_name
    expected = photos_dataset.sort_by_similarity(photos_dataset.first().id, brain_key="lookalike_index", k=5)

    photos_dataset.rename_brain_run("lookalike_index", "renamed_index")
    try:
        assert photos_dataset.list_brain_runs() == ["renamed_index"]
        # A new process, which never imports lookalike itself: FiftyOne finds the class from the run.
        out = run_python(
            "import json, sys, fiftyone as fo\n"
            "ds = fo.load_dataset('lookalike-photos')\n"
            "index = ds.load_brain_results('renamed_index')\n"
            "view = ds.sort_by_similarity(ds.first().id, brain_key='renamed_index', k=5)\n"
            "print(json.dumps({'cls': type(index).__name__, 'size': index.total_index_size,\n"
            "    'collection': index.config.collection_name, 'ids': view.values('id')}))\n"
        )
    finally:
        photos_dataset.rename_brain_run("renamed_index", "lookalike_index")
    child = json.loads(out.strip().splitlines()[-1])
    assert child == {
        "cls": "LookalikeSimilarityIndex",
        "size": 19,
        "collection": photo_index.config.collection_name,
        "ids": expected.values("id"),
    }


def test_milvus_guide_recipe_to_its_last_line(
    dataset: fo.Dataset, server: ServerProcess, lookalike_client: Client
) -> None:
    """Milvus' guide "Conduct Vision Searches with Milvus and FiftyOne" as written, the backend's name changed:
    it ends with `milvus_index.delete()`, which drops the collection as cleanup() does."""
    milvus_index = fob.compute_similarity(dataset, brain_key="milvus_index", backend="lookalike",
                                          server=server.address)
    query = dataset.first().id
    view = dataset.sort_by_similarity(query, brain_key="milvus_index", k=10)
    assert view.first().id == query and len(view) == 10
    name = milvus_index.config.collection_name
    assert name in [c.name for c in lookalike_client.list_collections()]

    milvus_index.delete()

    assert name not in [c.name for c in lookalike_client.list_collections()]
    assert milvus_index.total_index_size == 0
    dataset.delete_brain_run("milvus_index")
    assert dataset.list_brain_runs() == []


def test_failures_are_reported_per_sample_and_the_rest_stored(
    dataset: fo.Dataset, server: ServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_bytes(b"these are notes, not a JPEG")
    bad = dataset.add_samples([fo.Sample(filepath=str(not_an_image)), fo.Sample(filepath=str(tmp_path / "gone.jpg"))])

    with caplog.at_level(logging.WARNING, logger="lookalike.fiftyone_brain"):
        index = fob.compute_similarity(dataset, brain_key="tolerant", backend="lookalike", server=server.address)
    try:
        assert index.total_index_size == 19
        for sample_id in bad:
            assert any(sample_id in r.getMessage() for r in caplog.records), sample_id
        assert "2 of 21 samples were not embedded" in caplog.text
    finally:
        index.cleanup()

    with pytest.raises(ValueError, match="2 of 21 samples were not embedded"):
        fob.compute_similarity(
            dataset, brain_key="strict", backend="lookalike", server=server.address, skip_failures=False
        )
    strict = dataset.load_brain_results("strict")
    assert strict.total_index_size == 19
    strict.cleanup()


def test_sizes_and_ids_count_only_what_was_embedded(
    half_missing: tuple[fo.Dataset, list[str]], server: ServerProcess
) -> None:
    """FiftyOne Brain's own backend test on a dataset with missing files: sample_ids/label_ids are what the
    index holds, and index_size/missing_size follow, for samples and for patches, through views and reloads."""
    ds, real = half_missing
    samples = fob.compute_similarity(ds, brain_key="img", backend="lookalike", server=server.address)
    patches = fob.compute_similarity(ds, patches_field="gt", brain_key="obj", backend="lookalike",
                                     server=server.address)
    try:
        assert samples.label_ids is None
        assert set(samples.sample_ids) == set(real)
        assert samples.index_size == samples.total_index_size == 4
        view = ds.limit(5)  # real, gone, real, gone, real
        with samples.use_view(view):
            assert samples.index_size == 3
            assert samples.missing_size == 2
            assert set(samples.current_sample_ids) == set(real[:3])
        assert samples.index_size == 4

        labels = [d.id for sample_id in real for d in ds[sample_id]["gt"].detections]
        assert set(patches.label_ids) == set(labels)
        assert dict(zip(patches.label_ids, patches.sample_ids, strict=True)) == {
            d.id: sample_id for sample_id in real for d in ds[sample_id]["gt"].detections}
        assert patches.index_size == patches.total_index_size == 8
        with patches.use_view(ds.to_patches("gt").limit(6)):  # the labels of samples real, gone, real
            assert patches.index_size == 4
            assert patches.missing_size == 2

        samples.remove_from_index(real[:1])
        assert set(samples.sample_ids) == set(real[1:]) and samples.index_size == 3
        loaded = ds.load_brain_results("img", cache=False)
        assert set(loaded.sample_ids) == set(real[1:]) and loaded.index_size == 3
        ranked = ds.sort_by_similarity(real[1], brain_key="img").values("id")  # k=None: everything indexed
        assert sorted(ranked) == sorted(real[1:])
    finally:
        samples.cleanup()
        patches.cleanup()
    samples.reload()
    assert samples.index_size == 0 and len(samples.sample_ids) == 0


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


# Duplicates: FiftyOne's algorithm over neighbour searches done by the server, against the sklearn backend


@pytest.fixture
def duplicates_data() -> Iterator[tuple[fo.Dataset, np.ndarray]]:
    """150 samples: 120 spread-out vectors and 30 close copies of some of them (cosine distance < 0.01)."""
    rng = np.random.default_rng(11)
    basis = unit(rng.standard_normal((16, DIM)))
    spread = unit(rng.standard_normal((120, 16)) @ basis)
    copies = unit(spread[rng.choice(120, 30, replace=False)] + 0.05 * unit(rng.standard_normal((30, DIM))))
    embeddings = np.concatenate([spread, copies]).astype(np.float32)[rng.permutation(150)]
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{n:03d}.jpg") for n in range(150)])
    yield ds, embeddings
    ds.delete()


def test_duplicates_and_unique_match_fiftyone_sklearn(
    duplicates_data: tuple[fo.Dataset, np.ndarray], server: ServerProcess
) -> None:
    ds, embeddings = duplicates_data
    ids = ds.values("id")
    ours = fob.compute_similarity(
        ds, embeddings=embeddings, brain_key="dups", backend="lookalike", server=server.address
    )
    theirs = fob.compute_similarity(ds, embeddings=embeddings, brain_key="sk", backend="sklearn", metric="cosine")
    try:
        for index in (ours, theirs):
            index.find_duplicates(thresh=0.02)
        assert len(ours.duplicate_ids) >= 25
        assert sorted(ours.duplicate_ids) == sorted(theirs.duplicate_ids)
        assert sorted(ours.unique_ids) == sorted(theirs.unique_ids)
        assert ours.neighbors_map.keys() == theirs.neighbors_map.keys()
        for key, dups in ours.neighbors_map.items():
            # The same duplicates in the same order; sklearn's distances are Euclidean on unit vectors here.
            assert [d for d, _ in dups] == [d for d, _ in theirs.neighbors_map[key]]
            cosine = [1 - float(unit(embeddings[ids.index(key)]) @ unit(embeddings[ids.index(d)])) for d, _ in dups]
            np.testing.assert_allclose([x for _, x in dups], cosine, atol=1e-5)

        view = ours.duplicates_view(type_field="dup_type", dist_field="dup_dist")
        assert set(view.values("id")) == set(ours.duplicate_ids) | set(ours.neighbors_map)
        assert sorted(view.values("dup_type")) == sorted(
            ["duplicate"] * len(ours.duplicate_ids) + ["nearest"] * len(ours.neighbors_map)
        )
        assert sorted(ours.unique_view().values("id")) == sorted(ours.unique_ids)

        ours.find_unique(60)
        unique = [ids.index(i) for i in ours.unique_ids]
        assert abs(len(unique) - 60) <= 2  # FiftyOne's threshold search may not hit the count exactly
        distances = 1 - unit(embeddings[unique]) @ unit(embeddings[unique]).T
        np.fill_diagonal(distances, np.inf)
        assert distances.min() > ours.thresh - 1e-5  # no two kept samples within the threshold
        assert sorted(ours.unique_view().values("id")) == sorted(ours.unique_ids)

        with ours.use_view(ds.limit(100)):
            ours.find_duplicates(thresh=0.02)
            assert ours.duplicate_ids
            assert set(ours.duplicate_ids) | set(ours.unique_ids) == set(ids[:100])
    finally:
        ours.cleanup()


# Parity with FiftyOne's own Milvus backend on the same Milvus engine


class FlatMilvusSimilarityConfig(MilvusSimilarityConfig):
    """FiftyOne's Milvus backend with a FLAT index: its exact results, to compare ours with."""

    @property
    def index_params(self) -> dict:
        return {"metric_type": "IP", "index_type": "FLAT", "params": {}}

    @property
    def search_params(self) -> dict:
        return {"metric_type": "IP", "params": {}}


class FlatMilvusSimilarity(MilvusSimilarity):
    pass


@pytest.mark.filterwarnings("ignore:.*is an ORM-style PyMilvus API:FutureWarning")  # in FiftyOne's backend
def test_same_results_as_fiftyone_milvus_backend(
    vectors_dataset: fo.Dataset, server: ServerProcess, milvus_lite_uri: str
) -> None:
    ds = vectors_dataset
    ids = ds.values("id")
    embeddings = np.random.default_rng(5).standard_normal((300, DIM)).astype(np.float32)
    ours = fob.compute_similarity(
        ds, embeddings=embeddings, brain_key="ours", backend="lookalike", metric="dotproduct", server=server.address
    )
    theirs = fob.compute_similarity(
        ds, embeddings=embeddings, brain_key="milvus", backend=FlatMilvusSimilarityConfig, metric="dotproduct",
        uri=milvus_lite_uri,
    )
    try:
        for query in ids[:20]:
            a = ds.sort_by_similarity(query, brain_key="ours", k=10, dist_field="d_ours")
            b = ds.sort_by_similarity(query, brain_key="milvus", k=10, dist_field="d_milvus")
            assert a.values("id") == b.values("id") == exact_top(embeddings, ids, embeddings[ids.index(query)], 10)
            np.testing.assert_allclose(a.values("d_ours"), b.values("d_milvus"), rtol=1e-4)
    finally:
        ours.cleanup()
        theirs.cleanup()


@pytest.fixture
def shared_milvus_server(milvus_lite_uri: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A lookalike server over the `milvus-lite server` that FiftyOne's Milvus backend uses too."""
    proc = ServerProcess(tmp_path / "serve", "--milvus-uri", milvus_lite_uri)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.mark.filterwarnings("ignore:.*is an ORM-style PyMilvus API:FutureWarning")  # in FiftyOne's backend
def test_collection_names_do_not_clash_with_fiftyone_milvus_backend(
    vectors_dataset: fo.Dataset, shared_milvus_server: ServerProcess, milvus_lite_uri: str
) -> None:
    """One Milvus, both backends, one dataset: FiftyOne's names its collection `fiftyone_<dataset>`, ours take a
    lookalike prefix, and a name Milvus holds outside lookalike (hidden from lookalike's listing) is never used."""
    ds = vectors_dataset
    ds.name = "shared-milvus"
    embeddings = unit(np.random.default_rng(6).standard_normal((300, DIM))).astype(np.float32)
    ids = ds.values("id")
    theirs = fob.compute_similarity(ds, embeddings=embeddings, brain_key="milvus", backend="milvus",
                                    uri=milvus_lite_uri)
    squatter = fob.compute_similarity(ds, embeddings=embeddings[:, :64], brain_key="squatter", backend="milvus",
                                      uri=milvus_lite_uri, collection_name="lookalike_fiftyone_shared_milvus")
    server = shared_milvus_server.address
    ours = fob.compute_similarity(ds, embeddings=embeddings, brain_key="ours", backend="lookalike", server=server)
    again = None
    try:
        assert theirs.config.collection_name == "fiftyone_shared_milvus"
        assert ours.config.collection_name == "lookalike_fiftyone_shared_milvus_2"
        assert ds.get_brain_info("ours").config.collection_name == "lookalike_fiftyone_shared_milvus_2"
        assert ours.total_index_size == theirs.total_index_size == 300
        query = ids[7]
        expected = exact_top(embeddings, ids, embeddings[7], 5)
        assert ds.sort_by_similarity(query, brain_key="ours", k=5).values("id") == expected
        assert ds.sort_by_similarity(query, brain_key="milvus", k=5).values("id")[0] == query
        assert squatter.total_index_size == 300  # untouched

        # A run that recorded a name keeps it (loaded, or one chosen by an earlier version of this backend).
        loaded = ds.load_brain_results("ours", cache=False)
        assert loaded.config.collection_name == "lookalike_fiftyone_shared_milvus_2"
        again = fob.compute_similarity(ds, embeddings=embeddings, brain_key="again", backend="lookalike",
                                       server=server)
        assert again.config.collection_name == "lookalike_fiftyone_shared_milvus_3"
        # A name the user gives that Milvus holds outside lookalike: a clear error, nothing renamed.
        with pytest.raises(ValueError, match=r"'fiftyone_shared_milvus' already exists.*lookalike did not create"):
            fob.compute_similarity(ds, embeddings=embeddings, brain_key="given", backend="lookalike", server=server,
                                   collection_name="fiftyone_shared_milvus")
        assert theirs.total_index_size == 300
    finally:
        for index in (ours, again, theirs, squatter):
            if index is not None:
                index.cleanup()


# Object patches, cropped on the client and embedded on the server


def test_patches_are_embedded_on_the_server(
    dataset: fo.Dataset, server: ServerProcess, lookalike_client: Client
) -> None:
    boxes = ([0.1, 0.1, 0.4, 0.4], [0.5, 0.45, 0.45, 0.5])
    for sample in dataset:
        sample["gt"] = fo.Detections(detections=[fo.Detection(label="thing", bounding_box=b) for b in boxes])
        sample.save()
    index = fob.compute_similarity(dataset, patches_field="gt", brain_key="patches", backend="lookalike",
                                   server=server.address)
    try:
        assert index.total_index_size == 38
        sample = dataset.first()
        label = sample["gt"].detections[1]
        patches = dataset.to_patches("gt")
        assert patches.sort_by_similarity(label.id, brain_key="patches", k=4).first().id == label.id
        assert dataset.sort_by_similarity(label.id, brain_key="patches", k=4).first().id == sample.id

        vectors, sample_ids, label_ids = index.get_embeddings(sample_ids=[sample.id])
        assert sorted(label_ids) == sorted(d.id for d in sample["gt"].detections)
        assert list(sample_ids) == [sample.id, sample.id]
        with Image.open(sample.filepath) as image:
            w, h = image.size
            x, y, bw, bh = label.bounding_box
            crop = image.convert("RGB").crop((round(x * w), round(y * h), round((x + bw) * w), round((y + bh) * h)))
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        expected = lookalike_client.embed([buffer.getvalue()])[0]
        assert float(vectors[list(label_ids).index(label.id)] @ expected) > 0.98

        index.remove_from_index(sample_ids=[sample.id])
        assert index.total_index_size == 36
    finally:
        index.cleanup()


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


# Connection settings


def test_token_and_tls_settings(vectors_dataset: fo.Dataset, server: ServerProcess, tmp_path: Path) -> None:
    embeddings = np.random.default_rng(2).standard_normal((300, DIM)).astype(np.float32)
    with_token = fob.compute_similarity(vectors_dataset, embeddings=embeddings, backend="lookalike",
                                        server=server.address, token="s3cret")
    try:
        assert with_token.config.token == "s3cret"
        assert "s3cret" not in json.dumps(with_token.config.serialize())  # never written to the database
        assert with_token.sort_by_similarity(vectors_dataset.first().id, k=3).count() == 3
    finally:
        with_token.cleanup()
    with pytest.raises(ConnectionError, match=server.address):  # TLS to a plaintext server
        fob.compute_similarity(vectors_dataset, embeddings=embeddings, backend="lookalike",
                               server=server.address, secure=True)
    with pytest.raises(ValueError, match="Unsupported metric"):
        LookalikeSimilarityConfig(metric="manhattan")


def test_loading_without_a_server_fails_at_load(vectors_dataset: fo.Dataset, server: ServerProcess) -> None:
    """As FiftyOne's Milvus backend fails when it connects: at load_brain_results, naming the address and the fix,
    not at the first search with a bare ConnectionError."""
    embeddings = np.random.default_rng(4).standard_normal((300, DIM)).astype(np.float32)
    index = fob.compute_similarity(vectors_dataset, embeddings=embeddings, brain_key="gone", backend="lookalike",
                                   server=server.address)
    nobody = f"127.0.0.1:{free_port()}"
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError) as caught:
            vectors_dataset.load_brain_results("gone", cache=False, server=nobody)
        assert time.monotonic() - started < 15
        message = str(caught.value)
        assert f"no lookalike server answers at {nobody} (brain run 'gone')" in message
        assert "`lookalike serve`" in message and "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER" in message
        assert "--server" not in message  # the CLI's advice, not a FiftyOne user's
        again = vectors_dataset.load_brain_results("gone", cache=False, server=server.address)
        assert again.total_index_size == 300
    finally:
        index.cleanup()
        vectors_dataset.delete_brain_run("gone")


# Registration


def test_register_merges_with_an_existing_brain_config(tmp_path: Path) -> None:
    path = tmp_path / "fiftyone" / "brain_config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({
        "default_similarity_backend": "sklearn",
        "similarity_backends": {"qdrant": {"url": "http://q:6333"}, "lookalike": {"server": "gpu-box:50051"}},
    }))

    assert register(path) == path
    assert register(path, make_default=True) == path

    assert json.loads(path.read_text()) == {
        "default_similarity_backend": "lookalike",
        "similarity_backends": {
            "qdrant": {"url": "http://q:6333"},
            "lookalike": {"server": "gpu-box:50051", "config_cls": CONFIG_CLS},
        },
    }
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        register(broken)
    assert broken.read_text() == "{not json"


def test_registering_again_with_the_autoload_in_place(tmp_path: Path) -> None:
    """Registration imported first (as `lookalike fiftyone-register` does) while FiftyOne's config already loads
    the autoload module: the backend it imports on the way imports the registration module back, complete."""
    out = run_python(
        "import json, sys\n"
        "import lookalike.fiftyone_registration as registration\n"
        f"registration.register({str(tmp_path / 'brain_config.json')!r})\n"
        "import fiftyone.brain.similarity as fbs\n"
        "print(json.dumps({'backend': 'lookalike.fiftyone_brain' in sys.modules,\n"
        "    'patched': getattr(fbs.compute_similarity, '_lookalike', False)}))\n",
        env={"FIFTYONE_MODULE_PATH": "lookalike.fiftyone_autoload"},
    )
    assert json.loads(out.strip().splitlines()[-1]) == {"backend": True, "patched": True}
    assert json.loads((tmp_path / "brain_config.json").read_text())["similarity_backends"]["lookalike"] == {
        "config_cls": CONFIG_CLS}


CHILD_COMPUTE = (
    "import sys, json, numpy as np, fiftyone as fo, fiftyone.brain as fob\n"
    "ds = fo.Dataset()\n"
    "ds.add_samples([fo.Sample(filepath=f'/nonexistent/{n}.jpg') for n in range(50)])\n"
    "imported = 'lookalike.fiftyone_brain' in sys.modules\n"
    "index = fob.compute_similarity(ds, embeddings=np.eye(50, 1280, dtype=np.float32), brain_key='k')\n"
    "top = ds.sort_by_similarity(ds.first().id, brain_key='k', k=1).values('id')\n"
    "print(json.dumps({'imported_before': imported, 'cls': type(index).__name__, 'server': index.config.server,\n"
    "    'size': index.total_index_size, 'top': top == [ds.first().id]}))\n"
    "index.cleanup()\n"
)


def test_registration_by_environment_and_by_config_file(server: ServerProcess, tmp_path: Path) -> None:
    expected = {"imported_before": False, "cls": "LookalikeSimilarityIndex", "server": server.address, "size": 50,
                "top": True}
    by_env = run_python(CHILD_COMPUTE, env={
        "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": "*,lookalike",
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS": CONFIG_CLS,
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER": server.address,
        "FIFTYONE_BRAIN_DEFAULT_SIMILARITY_BACKEND": "lookalike",
    })
    assert json.loads(by_env.strip().splitlines()[-1]) == expected

    config = register(tmp_path / "brain_config.json", server=server.address, make_default=True)
    by_file = run_python(CHILD_COMPUTE, env={"FIFTYONE_BRAIN_CONFIG_PATH": str(config)})
    assert json.loads(by_file.strip().splitlines()[-1]) == expected


CHILD_ENV_ONLY = (
    "import json, os, sys, numpy as np, fiftyone as fo, fiftyone.brain as fob, fiftyone.core.models as fom\n"
    "import fiftyone.zoo as foz\n"
    "from lookalike import Client\n"
    "class StandIn(fom.Model, fom.EmbeddingsMixin):\n"
    "    # FiftyOne's default zoo model as it would run here with torch: 1280-d vectors computed locally\n"
    "    media_type, ragged_batches, transforms, preprocess, has_embeddings = 'image', False, None, False, True\n"
    "    def predict(self, arg): raise NotImplementedError\n"
    "    def embed(self, arg): return np.full(1280, float(np.asarray(arg).mean()), np.float32)\n"
    "    def embed_all(self, args): return np.stack([self.embed(a) for a in args])\n"
    "loaded = []\n"
    "foz.load_zoo_model = lambda name, **kwargs: loaded.append(name) or StandIn()\n"
    "ds = fo.load_dataset('lookalike-photos')\n"
    "client = Client(os.environ['FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER'])\n"
    "before = sorted(c.name for c in client.list_collections())\n"
    "imported = 'lookalike.fiftyone_brain' in sys.modules\n"
    "try:\n"
    "    fob.compute_similarity(ds, brain_key='env_only', backend='lookalike')\n"
    "    error = None\n"
    "except ValueError as e:\n"
    "    error = str(e)\n"
    "after = sorted(c.name for c in client.list_collections())\n"
    "registered = 'env_only' in ds.list_brain_runs()\n"
    "index = fob.compute_similarity(ds, brain_key='env_only', backend='lookalike')  # again: the server embeds\n"
    "stored, _, _ = index.get_embeddings([ds.first().id])\n"
    "server = client.embed([ds.first().filepath])[0]\n"
    "print(json.dumps({'imported_before': imported, 'error': error, 'same_collections': before == after,\n"
    "    'registered': registered, 'loaded': loaded, 'size': index.total_index_size, 'model': index.config.model,\n"
    "    'server_vectors': bool(np.allclose(stored[0], server, atol=1e-5))}))\n"
    "index.cleanup(); ds.delete_brain_run('env_only')\n"
)


def test_registration_by_environment_alone_never_stores_fiftyones_default_model(
    server: ServerProcess, photos_dataset: fo.Dataset
) -> None:
    """Trap: registered by environment variables alone (no FIFTYONE_MODULE_PATH), compute_similarity with no
    model gets FiftyOne's default zoo model, loaded before the backend is imported (a stand-in here: no network).
    The backend stops before any brain run or collection exists, says why and the line that fixes it; in that
    process the backend is loaded by then, so the same call again embeds on the server."""
    out = run_python(CHILD_ENV_ONLY, env={
        "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": "*,lookalike",
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS": CONFIG_CLS,
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER": server.address,
    })
    child = json.loads(out.strip().splitlines()[-1])
    error = child.pop("error")
    assert child == {"imported_before": False, "same_collections": True, "registered": False,
                     "loaded": ["mobilenet-v2-imagenet-torch"], "size": 19, "model": None, "server_vectors": True}
    assert error is not None
    assert "FiftyOne loaded its default model 'mobilenet-v2-imagenet-torch'" in error
    assert "FIFTYONE_MODULE_PATH=lookalike.fiftyone_autoload" in error
    assert "model='mobilenet-v2-imagenet-torch'" in error


def test_printed_environment_runs_the_milvus_guide(server: ServerProcess, photos_dataset: fo.Dataset) -> None:
    """`lookalike fiftyone-register --print-env` gives the environment route whole; with it, Milvus' guide runs
    as written with only the backend's name changed, no lookalike import and no model."""
    printed = subprocess.run(
        [sys.executable, "-m", "lookalike.cli", "fiftyone-register", "--print-env", "--server", server.address],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in printed.splitlines())
    assert env == {
        "FIFTYONE_MODULE_PATH": "lookalike.fiftyone_autoload",
        "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": "*,lookalike",
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS": CONFIG_CLS,
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER": server.address,
    }
    out = run_python(
        "import json, fiftyone as fo, fiftyone.brain as fob\n"
        "dataset = fo.load_dataset('lookalike-photos')\n"
        "milvus_index = fob.compute_similarity(dataset, brain_key='milvus_index', backend='lookalike')\n"
        "query = dataset.first().id\n"
        "view = dataset.sort_by_similarity(query, brain_key='milvus_index', k=10)\n"
        "result = {'first': view.first().id == query, 'len': len(view), 'size': milvus_index.total_index_size,\n"
        "    'server_model': milvus_index.config.server_model}\n"
        "milvus_index.delete()\n"
        "dataset.delete_brain_run('milvus_index')\n"
        "result['after'] = milvus_index.total_index_size\n"
        "print(json.dumps(result))\n",
        env=env,
    )
    assert json.loads(out.strip().splitlines()[-1]) == {
        "first": True, "len": 10, "size": 19, "server_model": "efficientnet-lite0", "after": 0}


@pytest.mark.skipif(
    importlib.util.find_spec("lookalike.fiftyone_autoload") is None,
    reason="lookalike.fiftyone_autoload is not in the package yet",
)
def test_recipe_with_no_import_and_no_model(server: ServerProcess, photos_dataset: fo.Dataset) -> None:
    """The seed's lines exactly: FiftyOne loads the backend at start-up (its config's module_path)."""
    out = run_python(
        "import json, fiftyone as fo, fiftyone.brain as fob\n"
        "ds = fo.load_dataset('lookalike-photos')\n"
        "fob.compute_similarity(ds, brain_key='no_import', backend='lookalike')\n"
        "view = ds.sort_by_similarity(ds.first().id, brain_key='no_import', k=10)\n"
        "index = ds.load_brain_results('no_import')\n"
        "print(json.dumps({'first': view.first().id == ds.first().id, 'size': index.total_index_size}))\n"
        "index.cleanup(); ds.delete_brain_run('no_import')\n",
        env={
            "FIFTYONE_MODULE_PATH": "lookalike.fiftyone_autoload",
            "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": "*,lookalike",
            "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS": CONFIG_CLS,
            "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER": server.address,
        },
    )
    assert json.loads(out.strip().splitlines()[-1]) == {"first": True, "size": 19}
