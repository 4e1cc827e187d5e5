"""`serve --model-card models/efficientnet-lite0-int8/card.toml` serves like any card, beside a float32
server over the same Milvus, and a collection made with one model refuses images from the other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lookalike import Client
from tests.conftest import REPO, ServerProcess

INT8_CARD = REPO / "models" / "efficientnet-lite0-int8" / "card.toml"
MODELS = {"float32": "efficientnet-lite0", "int8": "efficientnet-lite0-int8"}


@pytest.fixture(scope="module")
def servers(milvus_lite_server_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A float32 server and an int8 server over one `milvus-lite server`: their addresses by precision."""
    procs = {
        "float32": ServerProcess(tmp_path_factory.mktemp("float32"), "--milvus-uri", milvus_lite_server_uri,
                                 "--default-collection", "float32_default"),
        "int8": ServerProcess(tmp_path_factory.mktemp("int8"), "--milvus-uri", milvus_lite_server_uri,
                              "--default-collection", "int8_default", "--model-card", str(INT8_CARD)),
    }
    try:
        for proc in procs.values():
            proc.wait_ready(timeout=120)
        yield {name: proc.address for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.stop()


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_int8_server_ingests_and_finds_photos(servers: dict[str, str], photos_dir: Path):
    with Client(servers["int8"]) as client:
        assert client.describe_collection("int8_default").model == MODELS["int8"]
        assert client.describe_collection("int8_default").model_precision == "int8"
        client.create_collection("int8_photos", "cosine", "FLAT")
        try:
            assert client.describe_collection("int8_photos").model == MODELS["int8"]
            results = list(client.ingest_folder(photos_dir, collection="int8_photos"))
            assert results
            assert all(r.ok for r in results), [r for r in results if not r.ok]
            for name in ("chelsea.jpg", "coffee.jpg", "astronaut.jpg"):
                hits = client.search(photos_dir / name, k=1, collection="int8_photos", consistency="Strong")
                assert hits[0].id == name
        finally:
            client.drop_collection("int8_photos")


def test_int8_embeddings_agree_with_float32(servers: dict[str, str], photos_dir: Path):
    files = sorted(photos_dir.iterdir())
    with Client(servers["float32"]) as float32, Client(servers["int8"]) as int8:
        a, b = unit(float32.embed(files)), unit(int8.embed(files))
    cos = (a * b).sum(1)
    by_photo = {f.name: round(float(c), 3) for f, c in zip(files, cos, strict=True)}
    assert cos.mean() >= 0.95, by_photo
    assert cos.min() >= 0.9, by_photo


@pytest.mark.parametrize(("made_by", "ingested_by"), [("float32", "int8"), ("int8", "float32")])
def test_a_collection_refuses_images_from_the_other_model(servers, photos_dir, made_by, ingested_by):
    name = f"made_by_{made_by}"
    with Client(servers[made_by]) as maker, Client(servers[ingested_by]) as other:
        maker.create_collection(name, "cosine", "FLAT")
        try:
            (result,) = other.ingest([("chelsea", photos_dir / "chelsea.jpg")], collection=name)
            assert result.code == "FAILED_PRECONDITION"
            # Both models named, quoted (one name is the start of the other).
            assert f"'{MODELS[made_by]}'" in result.message
            assert f"'{MODELS[ingested_by]}'" in result.message
            # The model that made the collection still ingests into it.
            (ok,) = maker.ingest([("coffee", photos_dir / "coffee.jpg")], collection=name)
            assert ok.ok
            assert maker.describe_collection(name).model == MODELS[made_by]
        finally:
            maker.drop_collection(name)
