"""Whose vectors a run holds, and FiftyOne Brain's own backend contract for embeddings fields (issue 26, traps 2
and 6): vectors from elsewhere get a vectors-only collection that never carries the server's model, an
embeddings field named for a server-embedded run is written, and server-made vectors keep the server's model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.zoo as foz
import numpy as np
import pytest
from fiftyone import ViewField as F

from lookalike import Client, LookalikeClientError, Text
from lookalike.cli import main as lookalike_cli
from tests.conftest import ServerProcess

DIM = 1280  # the server's model (EfficientNet-Lite0): foreign vectors of the same size are the trap


@pytest.fixture
def no_zoo_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """FiftyOne must not reach for its default zoo model (offline it fails; online it embeds the wrong model)."""
    def refuse(name: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"FiftyOne loaded zoo model {name!r}")

    monkeypatch.setattr(foz, "load_zoo_model", refuse)


def test_foreign_vectors_of_the_models_size_are_vectors_only(
    dataset: fo.Dataset, server: ServerProcess, lookalike_client: Client, photos_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """1280-d vectors from elsewhere (MobileNet's, say): the collection says vectors-only and carries no model;
    image and text queries are refused with the collection's name by the backend, the client and the CLI;
    add_samples() does not adopt the server's model; queries by id still work."""
    ids = dataset.values("id")
    foreign = np.random.default_rng(3).standard_normal((len(ids), DIM)).astype(np.float32)
    index = fob.compute_similarity(dataset, embeddings=foreign, brain_key="foreign", backend="lookalike",
                                   server=server.address)
    name = index.collection_name
    photo = str(photos_dir / "chelsea.jpg")
    try:
        info = lookalike_client.describe_collection(name)
        assert (info.model, info.vectors_only, info.dimension, info.row_count) == ("", True, DIM, len(ids))
        assert not index.config.server_model
        assert dataset.sort_by_similarity(ids[4], brain_key="foreign", k=3).first().id == ids[4]
        with pytest.raises(ValueError, match="computed outside the lookalike server"):
            dataset.sort_by_similarity(photo, brain_key="foreign", k=3)
        with pytest.raises(ValueError, match=f"collection '{name}' is vectors-only"):
            index.add_samples(dataset)
        assert not index.config.server_model
        assert lookalike_client.describe_collection(name).row_count == len(ids)

        for query in (Path(photo), Text("a cat")):
            with pytest.raises(LookalikeClientError) as refused:
                lookalike_client.search(query, k=3, collection=name)
            assert refused.value.code == "FAILED_PRECONDITION"
            assert name in refused.value.details and "computed elsewhere" in refused.value.details

        capsys.readouterr()
        assert lookalike_cli(["search", photo, "--collection", name, "--server", server.address]) == 1
        said = capsys.readouterr().err
        assert "FAILED_PRECONDITION" in said or "computed elsewhere" in said
        assert name in said and "computed elsewhere" in said
    finally:
        index.cleanup()


def test_vectors_declared_the_servers_keep_its_model(
    dataset: fo.Dataset, server: ServerProcess, lookalike_client: Client, photos_dir: Path
) -> None:
    """`embeddings_from_server=True`: vectors the server made (Client.embed) get a collection of its model, so a
    photo is a query; the declaration is refused for vectors of another size."""
    paths = dataset.values("filepath")
    vectors = np.stack(lookalike_client.embed(paths))
    index = fob.compute_similarity(dataset, embeddings=vectors, embeddings_from_server=True, brain_key="declared",
                                   backend="lookalike", server=server.address)
    try:
        info = lookalike_client.describe_collection(index.collection_name)
        assert info.model and not info.vectors_only and index.config.server_model == info.model
        photo = str(photos_dir / "coffee.jpg")
        assert dataset.sort_by_similarity(photo, brain_key="declared", k=3).first().filepath == photo
    finally:
        index.cleanup()
    with pytest.raises(ValueError, match="embeddings_from_server=True, but the 64-d embeddings cannot be"):
        fob.compute_similarity(dataset, embeddings=np.ones((len(paths), 64), np.float32), embeddings_from_server=True,
                               collection_name="t_declared_64", backend="lookalike", server=server.address)
    lookalike_client.drop_collection("t_declared_64")


def test_embeddings_field_is_written_for_server_embedded_runs(
    half_missing: tuple[fo.Dataset, list[str]], server: ServerProcess, no_zoo_model: None
) -> None:
    """FiftyOne Brain's test_images_missing/test_patches_missing with no model: `embeddings="a_field"` takes the
    server path (no zoo model), and the field holds the stored vectors of exactly what was embedded."""
    ds, real = half_missing
    samples = fob.compute_similarity(ds, embeddings="emb", brain_key="img", backend="lookalike",
                                     server=server.address)
    patches = fob.compute_similarity(ds, patches_field="gt", embeddings="pemb", brain_key="obj",
                                     backend="lookalike", server=server.address)
    try:
        assert sorted(ds.exists("emb").values("id")) == sorted(real)
        assert samples.index_size == 4 and set(samples.sample_ids) == set(real)
        stored, stored_ids, _ = samples.get_embeddings(real)
        written = dict(zip(ds.values("id"), ds.values("emb"), strict=True))
        np.testing.assert_allclose(np.stack([written[i] for i in stored_ids]), stored, rtol=1e-6)
        assert samples.config.server_model  # the server embedded: image queries allowed

        labels = [d.id for sample_id in real for d in ds[sample_id]["gt"].detections]
        assert ds.filter_labels("gt", F("pemb") != None).count("gt.detections") == len(labels) == 8  # noqa: E711
        assert set(patches.label_ids) == set(labels) and patches.total_index_size == 8
        stored, _, stored_labels = patches.get_embeddings(label_ids=labels[:3])
        by_label = {d.id: d["pemb"] for sample_id in real for d in ds[sample_id]["gt"].detections}
        np.testing.assert_allclose(np.stack([by_label[i] for i in stored_labels]), stored, rtol=1e-6)

        samples.remove_from_index(real[:1])  # the field follows the index, as in FiftyOne's sklearn backend
        assert sorted(ds.exists("emb").values("id")) == sorted(real[1:])
    finally:
        samples.cleanup()
        patches.cleanup()


def test_an_existing_embeddings_field_is_read_not_recomputed(
    vectors_dataset: fo.Dataset, server: ServerProcess, no_zoo_model: None
) -> None:
    """A field that exists already is FiftyOne's own path: its vectors are stored, as vectors from elsewhere."""
    vectors = np.random.default_rng(4).standard_normal((len(vectors_dataset), 32)).astype(np.float32)
    vectors_dataset.set_values("mine", list(vectors))
    index = fob.compute_similarity(vectors_dataset, embeddings="mine", backend="lookalike", server=server.address)
    try:
        assert index.total_index_size == len(vectors_dataset)
        with Client(server.address) as client:
            assert client.describe_collection(index.collection_name).vectors_only
    finally:
        index.cleanup()


@pytest.fixture
def photos_with_boxes(dataset: fo.Dataset) -> fo.Dataset:
    for sample in dataset:
        sample["gt"] = fo.Detections(detections=[fo.Detection(label="x", bounding_box=[0.2, 0.2, 0.6, 0.6])])
        sample.save()
    return dataset


@pytest.mark.parametrize("patches_field", [None, "gt"])
def test_compute_embeddings_then_add_to_index_keeps_the_servers_model(
    photos_with_boxes: fo.Dataset, server: ServerProcess, photos_dir: Path, patches_field: str | None,
    no_zoo_model: None,
) -> None:
    """FiftyOne's flow `embeddings=False`, then `compute_embeddings` + `add_to_index`: the vectors are the
    server's, so a query by photo is embedded by the server, in this process and after a reload."""
    ds = photos_with_boxes
    index = fob.compute_similarity(ds, embeddings=False, patches_field=patches_field, brain_key="later",
                                   backend="lookalike", server=server.address)
    try:
        embeddings, sample_ids, label_ids = index.compute_embeddings(ds)
        index.add_to_index(embeddings, sample_ids, label_ids=label_ids)
        assert index.total_index_size == len(ds)
        photo = str(photos_dir / "astronaut.jpg")
        view = ds.to_patches("gt") if patches_field else ds
        assert view.sort_by_similarity(photo, brain_key="later", k=2).first().filepath == photo
        reloaded = ds.load_brain_results("later", cache=False)
        assert reloaded.config.server_model == index.config.server_model != ""
        refusal = _refusal(lambda: view.sort_by_similarity("an astronaut", brain_key="later", k=2))
        # A model with no text tower says so; never that the vectors came from elsewhere.
        assert "computed outside" not in refusal and "computed elsewhere" not in refusal
    finally:
        index.cleanup()


def _refusal(query: Callable[[], object]) -> str:
    """The ValueError a query raised, or "" if it ran."""
    try:
        query()
    except ValueError as e:
        return str(e)
    return ""
