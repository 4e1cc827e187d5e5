"""Shared fixtures: real photos, and real `lookalike serve` processes on free ports over real Milvus."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike import Client
from lookalike_server.embedded_milvus import MilvusLiteServer, standalone
from tests.photos import write_photos

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`lookalike serve` as a user runs it, in its own folder, stopped with SIGTERM."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{self.port}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike.cli", "serve", "--address", self.address, *args],
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Milvus Lite unless a test names another store: the default ("auto") depends on what is installed.
            env={**os.environ, "LOOKALIKE_MILVUS_EMBEDDED": "lite", **(env or {})},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        with Client(self.address) as client:
            try:
                client.wait_until_ready(timeout)
            except TimeoutError as e:
                raise RuntimeError(f"{e}\n--- server log ---\n{self.log()[-4000:]}") from None

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


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
def milvus_standalone_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real Milvus standalone server (PyPI `milvus`), started and stopped here."""
    if not standalone.available():
        pytest.skip("the Milvus standalone venv is missing: run `make milvus-standalone` (make test does)")
    server = standalone.MilvusStandalone(tmp_path_factory.mktemp("milvus-standalone"))
    started = time.monotonic()
    uri = server.start()
    print(f"Milvus standalone up at {uri} in {time.monotonic() - started:.1f} s")
    try:
        yield uri
    finally:
        server.stop()


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
