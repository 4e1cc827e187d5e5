"""`serve --workers N`: several processes answer on one port over one Milvus, and the supervisor keeps them up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import psutil
import pytest

from lookalike import ById, Client
from tests.conftest import ServerProcess, free_port

DIM = 1280


def workers_of(proc: ServerProcess) -> list[psutil.Process]:
    """The live worker processes under the supervisor (multiprocessing's resource tracker is not one)."""
    workers = []
    for child in psutil.Process(proc.proc.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.Error:  # gone (or a zombie) while we looked
            continue
    return workers


def searches_served(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    series = 'lookalike_requests_total{code="OK",method="/lookalike.v1.Images/Search"} '
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def two_workers(milvus_lite_server_uri, tmp_path):
    metrics_port = free_port()
    proc = ServerProcess(tmp_path, "--workers", "2", "--milvus-uri", milvus_lite_server_uri,
                         "--metrics-port", str(metrics_port))
    try:
        proc.wait_ready(timeout=120)
        # wait_ready's health check reached one worker; a call may land on the other while it still loads
        # ("the server is starting"), which a busy machine made likely. Each worker logs when it serves.
        wait_for(lambda: proc.log().count("SERVING on") >= 2, 120, "both workers serving")
        yield proc, metrics_port
    finally:
        proc.stop()


def test_both_workers_answer_on_one_port(two_workers):
    proc, metrics_port = two_workers
    wait_for(lambda: len(workers_of(proc)) == 2, 30, "two workers")
    data = np.random.default_rng(3).standard_normal((40, DIM)).astype(np.float32)
    with Client(proc.address) as client:
        client.create_collection("shared_port", "cosine", "FLAT")
        assert all(r.ok for r in client.ingest(((f"w{j}", data[j]) for j in range(40)), "shared_port"))
    wait_for(lambda: _answers(proc, metrics_port), 60, "both workers' metrics endpoints")
    # Each new connection lands on either worker: both see the collection and the same rows.
    for j in range(16):
        with Client(proc.address) as client:
            assert client.search(ById(f"w{j}"), k=1, collection="shared_port", consistency="Strong")[0].id == f"w{j}"
    served = [searches_served(metrics_port + i) for i in range(2)]
    assert sum(served) == 16 and min(served) > 0, served  # 16 connections all on one worker: odds 1 in 32,768
    with Client(proc.address) as client:
        client.drop_collection("shared_port")


def _answers(proc: ServerProcess, metrics_port: int) -> bool:
    try:
        for i in range(2):
            searches_served(metrics_port + i)
        return True
    except OSError:
        return False


def test_a_killed_worker_is_started_again_and_sigterm_stops_all(two_workers):
    proc, _ = two_workers
    wait_for(lambda: len(workers_of(proc)) == 2, 30, "two workers")
    victim = workers_of(proc)[0]
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: victim.pid not in [w.pid for w in workers_of(proc)] and len(workers_of(proc)) == 2, 60,
             "the killed worker to be replaced")
    assert "starting it again" in proc.log()
    proc.wait_ready(timeout=120)
    wait_for(lambda: proc.log().count("SERVING on") >= 3, 120, "the new worker serving")
    with Client(proc.address) as client:
        assert client.list_collections() is not None
    workers = workers_of(proc)
    assert proc.stop() == 0
    assert not any(_alive(w) for w in workers)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_workers_refuse_milvus_lite_in_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lookalike.cli", "serve", "--workers", "2", "--address", f"127.0.0.1:{free_port()}",
         "--milvus-embedded", "lite", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "Milvus Lite runs inside one process" in done.stderr
    assert "--milvus-embedded standalone or lite-server" in done.stderr


def test_workers_refuse_a_taken_port(tmp_path, milvus_lite_server_uri):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "lookalike.cli", "serve", "--workers", "2", "--address", f"127.0.0.1:{port}",
             "--milvus-uri", milvus_lite_server_uri],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )
    assert done.returncode == 1
    assert "is another server using the port" in done.stderr
