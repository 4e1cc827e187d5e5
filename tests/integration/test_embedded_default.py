"""The embedded Milvus a user gets: `lookalike serve` anywhere starts the standalone that lookalike[server]
installs, and a data directory written by the release before (Milvus Lite's milvus.db, or a standalone one
linked to the binaries of the old .venv-milvus) opens under `auto` in its own store with all its rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike import Client
from lookalike_server.embedded_milvus import binaries
from lookalike_server.testing import ServerProcess, free_port

ROWS = 40


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [d for c in children for d in (int(c), *_descendants(int(c)))]


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" in status.read_text().lower()
    except OSError:
        return True


@pytest.mark.standalone
def test_lookalike_serve_from_an_empty_folder_starts_the_standalone(tmp_path):
    folder = tmp_path / "anywhere"
    folder.mkdir()
    address = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}  # as a new user runs it
    command = [str(Path(sys.executable).with_name("lookalike")), "serve", "--address", address,
               "--milvus-embedded", "auto"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    children: list[int] = []
    try:
        with Client(address) as client:
            try:
                client.wait_until_ready(240)
            except TimeoutError as e:
                raise AssertionError(f"{e}\n{log_path.read_text(errors='replace')[-4000:]}") from None
            info = client.describe_collection("")
            assert info.model == "efficientnet-lite0" and info.row_count == 0
        log_text = log_path.read_text(errors="replace")
        assert "embedded Milvus: standalone (auto: a new data directory" in log_text
        assert "started embedded Milvus (standalone)" in log_text
        assert (folder / "lookalike-data" / "milvus-standalone").is_dir()
        assert not (folder / "lookalike-data" / "milvus.db").exists()
        assert (folder / "lookalike-data" / "milvus-standalone" / "bin").resolve() == binaries.installed_binaries()
        children = _descendants(proc.pid)
        assert children, "the standalone runs as a child of serve"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    assert rc == 0, log_path.read_text(errors="replace")[-4000:]
    time.sleep(1)
    assert all(_gone(pid) for pid in children), "stopping serve stops the standalone"


def _ingest_rows(address: str) -> np.ndarray:
    vectors = np.random.default_rng(7).standard_normal((ROWS, 1280)).astype(np.float32)
    with Client(address, timeout=60) as client:
        results = list(client.ingest((f"row-{i}", vectors[i]) for i in range(ROWS)))
        assert all(r.ok for r in results), [r for r in results if not r.ok]
        assert client.describe_collection("").row_count == ROWS
    return vectors


def _rows_still_there(address: str, vectors: np.ndarray) -> None:
    with Client(address, timeout=60) as client:
        assert client.describe_collection("").row_count == ROWS
        assert client.search(vectors[3], k=1)[0].id == "row-3"
        assert set(client.get([f"row-{i}" for i in range(ROWS)])) == {f"row-{i}" for i in range(ROWS)}


@pytest.mark.parametrize("store", ["lite", pytest.param("standalone", marks=pytest.mark.standalone)])
def test_a_data_directory_of_the_release_before_opens_with_its_rows(store, tmp_path):
    """Written by `--milvus-embedded lite` (every pip user's store before the standalone came with the
    install) or by the standalone of the release before, whose data directory links `bin` into the
    .venv-milvus that is gone now; `auto` opens it in the same store with every row."""
    env = {"COMMON_SESSION_TTL": "10"}  # the standalone's restart waits for the last run's etcd sessions
    first = ServerProcess(tmp_path, "--milvus-embedded", store, env=env)
    try:
        first.wait_ready(timeout=240)
        vectors = _ingest_rows(first.address)
    finally:
        assert first.stop(60) == 0
    data = tmp_path / "lookalike-data"
    if store == "standalone":
        old_link = tmp_path / "checkout" / ".venv-milvus" / "milvus-home" / "bin"  # never made: gone with the venv
        (data / "milvus-standalone" / "bin").unlink()
        (data / "milvus-standalone" / "bin").symlink_to(old_link, target_is_directory=True)
    else:
        assert (data / "milvus.db").is_dir() and not (data / "milvus-standalone").exists()

    again = ServerProcess(tmp_path, "--milvus-embedded", "auto", env=env)
    try:
        again.wait_ready(timeout=300)
        assert f"embedded Milvus: {store} (auto: " in again.log()
        _rows_still_there(again.address, vectors)
    finally:
        assert again.stop(60) == 0
    if store == "standalone":
        assert (data / "milvus-standalone" / "bin").resolve() == binaries.installed_binaries()
