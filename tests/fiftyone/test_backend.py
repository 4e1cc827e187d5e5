"""The FiftyOne backend against real FiftyOne, a real MongoDB and a real lookalike server: images the server
embeds. The seed's recipe on photos (queries by id, image, bytes and text, views, brain runs listed, renamed and
reloaded in a new process, Milvus' guide to its last line, per-sample failures, sizes and ids with missing files),
and object patches cropped on the client and embedded on the server.

Exactness is checked against numpy over the vectors the index holds (tests/fiftyone/oracle.py). Vectors brought
by the user or computed on the client: test_backend_vectors.py; beside FiftyOne's own sklearn and Milvus
backends: test_backend_parity.py; connection settings and registration: test_registration.py.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest
from fiftyone import ViewField as F
from PIL import Image

from lookalike import Client
from lookalike.fiftyone_brain import LookalikeSimilarityIndex
from lookalike.fiftyone_registration import CONFIG_CLS
from tests.conftest import ServerProcess
from tests.fiftyone.conftest import run_python
from tests.fiftyone.oracle import DIM, exact_top

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
