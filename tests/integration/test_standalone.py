"""`serve --milvus-uri` against the real Milvus standalone server (PyPI `milvus`), not Milvus Lite."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike import ById, Client, LookalikeClientError
from lookalike_server.embedded_milvus import launcher
from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def standalone_server(milvus_standalone_uri, tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("standalone-serve"), "--milvus-uri", milvus_standalone_uri)
    try:
        proc.wait_ready(timeout=120)
        yield proc
    finally:
        assert proc.stop() == 0


@pytest.mark.standalone
def test_the_embedded_standalone_runs_with_lookalikes_settings(milvus_standalone):
    """Milvus reads these over its milvus.yaml: the 20 ms time tick that Session reads wait for, and reads by id
    that do not queue behind searches of growing rows."""
    environ = Path(f"/proc/{milvus_standalone.server_pid}/environ").read_bytes().split(b"\0")
    assert f"PROXY_TIMETICKINTERVAL={launcher.TIME_TICK_MS}".encode() in environ
    assert f"QUERYNODE_SCHEDULER_MAXREADCONCURRENTRATIO={launcher.READ_CONCURRENCY_RATIO}".encode() in environ


@pytest.mark.standalone
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


@pytest.mark.standalone
def test_each_client_sees_its_own_writes_and_finds_ids_another_just_wrote(standalone_server):
    """The default level: a client's search sees the rows it was just told are stored; another client (which
    wrote nothing, so its searches do not wait for the writer's) searching by one of those ids finds it at once
    too: that lookup alone then waits for the server's writes."""
    rng = np.random.default_rng(11)
    with Client(standalone_server.address) as writer, Client(standalone_server.address) as reader:
        writer.create_collection("own_writes", "ip", "FLAT", dimension=16, vectors_only=True)
        try:
            for step in range(20):
                rows = rng.standard_normal((5, 16)).astype(np.float32)
                rows /= np.linalg.norm(rows, axis=1, keepdims=True)
                ids = [f"r{step}-{j}" for j in range(5)]
                results = list(writer.ingest(zip(ids, rows, strict=True), collection="own_writes"))
                assert all(r.ok for r in results), results
                assert writer.search(rows[2], k=1, collection="own_writes")[0].id == ids[2]
                assert reader.search(ById(ids[4]), k=1, collection="own_writes")[0].id == ids[4]
        finally:
            writer.drop_collection("own_writes")


@pytest.mark.standalone
def test_a_long_ingest_is_flushed_on_the_way(standalone_server, milvus_standalone_uri):
    """Rows of a stream that goes on are flushed (sealed, so Milvus indexes them) every FLUSH_EVERY_ROWS rows,
    not only at the stream's end: Milvus' flushed row count reaches them while the stream is still open."""
    from pymilvus import MilvusClient

    from lookalike_server.pipeline.ingest import FLUSH_EVERY_ROWS

    rows = FLUSH_EVERY_ROWS + 100
    data = np.random.default_rng(5).standard_normal((rows, 16)).astype(np.float32)
    milvus = MilvusClient(milvus_standalone_uri)
    flushed_while_open: list[int] = []

    def items():
        yield from ((f"f{i}", data[i]) for i in range(rows))
        deadline = time.monotonic() + 60  # the stream stays open until Milvus reports the flush
        while time.monotonic() < deadline:
            flushed = int(milvus.get_collection_stats("long_stream")["row_count"])
            if flushed >= FLUSH_EVERY_ROWS:
                flushed_while_open.append(flushed)
                return
            time.sleep(0.5)

    with Client(standalone_server.address) as client:
        client.create_collection("long_stream", "ip", "FLAT", dimension=16, vectors_only=True)
        try:
            results = list(client.ingest(items(), collection="long_stream"))
            assert len(results) == rows and all(r.ok for r in results)
            assert flushed_while_open and flushed_while_open[0] >= FLUSH_EVERY_ROWS
        finally:
            client.drop_collection("long_stream")
            milvus.close()


@pytest.mark.parametrize("mode", ["lite-server", pytest.param("standalone", marks=pytest.mark.standalone),
                                  pytest.param("auto", marks=pytest.mark.standalone)])
def test_serve_manages_an_embedded_milvus_child(mode, tmp_path):
    """`--milvus-embedded` starts the child Milvus in the data directory, and SIGTERM stops it too; the
    default, auto, starts the standalone server in a new data directory when it is installed."""
    proc = ServerProcess(tmp_path, "--milvus-embedded", mode)
    mode = "standalone" if mode == "auto" else mode
    try:
        proc.wait_ready(timeout=180)
        with Client(proc.address) as client:
            vector = np.random.default_rng(0).standard_normal(1280).astype(np.float32)
            assert next(client.ingest([("one", vector)])).ok
            assert client.search(vector, k=1)[0].id == "one"
        assert f"started embedded Milvus ({mode})" in proc.log()
        children = subprocess.run(["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the embedded Milvus runs as a child of serve"
    finally:
        assert proc.stop() == 0
    time.sleep(1)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.mark.standalone
def test_calibration_reads_past_a_servers_query_window(standalone_server):
    """A Milvus server refuses offset + limit above 16,384: the exact reference must read every row anyway."""
    rows = 17_000
    data = np.random.default_rng(4).standard_normal((rows, 1280)).astype(np.float32)
    with Client(standalone_server.address) as client:
        client.create_collection("wide", "cosine", "HNSW")
        try:
            assert all(r.ok for r in client.ingest(((f"w{i}", data[i]) for i in range(rows)), collection="wide"))
            client.search(data[0], k=10, collection="wide")  # starts the calibration
            deadline = time.monotonic() + 240
            while not client.describe_collection("wide").calibrations and time.monotonic() < deadline:
                time.sleep(2)
            assert set(client.describe_collection("wide").calibrations) == {10, 100}
            assert "invalid max query result window" not in standalone_server.log()
        finally:
            client.drop_collection("wide")


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [d for c in children for d in (int(c), *_descendants(int(c)))]


@pytest.mark.parametrize("mode", ["lite-server", pytest.param("standalone", marks=pytest.mark.standalone)])
def test_serve_restarts_a_crashed_embedded_milvus(mode, tmp_path):
    """kill -9 of the embedded Milvus: serve starts it again on the same data and address, and recovers."""
    proc = ServerProcess(tmp_path, "--milvus-embedded", mode)
    try:
        proc.wait_ready(timeout=180)
        vector = np.random.default_rng(1).standard_normal(1280).astype(np.float32)
        with Client(proc.address, timeout=30) as client:
            assert next(client.ingest([("kept", vector)])).ok
            time.sleep(2)  # the stream's end flushes the row
            for pid in _descendants(proc.proc.pid):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 180
            hits, codes = None, set()
            while hits is None and time.monotonic() < deadline:
                try:
                    hits = client.search(vector, k=1)
                except LookalikeClientError as e:
                    codes.add(e.code)
                    time.sleep(1)
            assert hits is not None, proc.log()[-3000:]
            assert codes <= {"UNAVAILABLE"}, "meanwhile calls fail fast as UNAVAILABLE"
            assert hits[0].id == "kept"
        assert "the embedded Milvus exited; starting it again" in proc.log()
        assert proc.proc.poll() is None
    finally:
        assert proc.stop() == 0
