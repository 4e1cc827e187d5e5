"""`serve --milvus-uri` against the real Milvus standalone server (PyPI `milvus`), not Milvus Lite."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike import ById, Client
from tests.conftest import ServerProcess

pytestmark = pytest.mark.standalone


@pytest.fixture(scope="module")
def standalone_server(milvus_standalone_uri, tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("standalone-serve"), "--milvus-uri", milvus_standalone_uri)
    try:
        proc.wait_ready(timeout=120)
        yield proc
    finally:
        assert proc.stop() == 0


def test_serve_over_a_real_milvus_server(standalone_server, photos_dir, milvus_standalone_uri):
    log = standalone_server.log()
    assert milvus_standalone_uri in log
    assert "Milvus Lite" not in log
    with Client(standalone_server.address) as client:
        assert client.describe_collection("").model == "efficientnet-lite0"
        client.create_collection("photos", "cosine", "HNSW")
        results = list(client.ingest_folder(photos_dir, collection="photos"))
        assert results and all(r.ok for r in results), [r for r in results if not r.ok]
        assert client.describe_collection("photos").row_count == len(results)
        for photo in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
            hits = client.search(photos_dir / photo, k=3, collection="photos")
            assert hits[0].id == photo
            assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        stored = client.get(["chelsea.jpg"], collection="photos")["chelsea.jpg"][0]
        assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-5)
        assert client.search(ById("chelsea.jpg"), k=1, collection="photos")[0].id == "chelsea.jpg"
        assert client.delete(["chelsea.jpg", "ghost"], collection="photos") == 1
        assert "chelsea.jpg" not in client.get(["chelsea.jpg", "coffee.jpg"], collection="photos")
        assert client.describe_collection("photos").row_count == len(results) - 1
        client.drop_collection("photos")
