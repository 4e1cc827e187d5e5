"""Shared fixtures: real photos, and real `lookalike serve` processes on free ports over real Milvus."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike import Client
from lookalike_server.embedded_milvus import MilvusLiteServer, standalone
from lookalike_server.testing import ServerProcess, free_port
from tests.photos import write_photos

REPO = Path(__file__).resolve().parents[1]
# ServerProcess and free_port live in lookalike_server.testing (benches use them too); tests import them here.
__all__ = ["REPO", "ServerProcess", "free_port"]


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder)
    return folder


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server over Milvus Lite for the whole session; tests use their own collections."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.address) as c:
        yield c


@pytest.fixture
def collection(client: Client, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh cosine FLAT collection named after the test, dropped afterwards."""
    name = "t_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:60]
    client.create_collection(name, "cosine", "FLAT")
    yield name
    client.drop_collection(name)


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[standalone.MilvusStandalone]:
    """The real Milvus standalone server (PyPI `milvus`), started and stopped here as `serve` embeds it."""
    if not standalone.available():
        pytest.skip(f"the Milvus standalone server is missing: {standalone.INSTALL} (make test does)")
    server = standalone.MilvusStandalone(tmp_path_factory.mktemp("milvus-standalone"))
    started = time.monotonic()
    uri = server.start()
    print(f"Milvus standalone up at {uri} in {time.monotonic() - started:.1f} s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_standalone_uri(milvus_standalone: standalone.MilvusStandalone) -> str:
    """The URI of the real Milvus standalone server."""
    assert milvus_standalone.uri is not None
    return milvus_standalone.uri


@pytest.fixture(params=["milvus-lite-server", pytest.param("standalone", marks=pytest.mark.standalone)])
def milvus_server_uri(request: pytest.FixtureRequest) -> str:
    """A Milvus reached by URI, each kind in turn: a `milvus-lite server`, then the real standalone."""
    fixture = "milvus_lite_server_uri" if request.param == "milvus-lite-server" else "milvus_standalone_uri"
    return request.getfixturevalue(fixture)


@pytest.fixture(scope="session")
def milvus_lite_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Milvus Lite engine as a shared gRPC server (`milvus-lite server`), for several replicas."""
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus-lite-server"))
    uri = server.start()
    try:
        yield uri
    finally:
        server.stop()
