"""Concurrent Ingest streams share Milvus calls: their rows go out in common upserts, and streams that end
together share one flush."""

from __future__ import annotations

import queue
import threading
import time
import urllib.request

import numpy as np
import pytest

from lookalike import ById, Client
from tests.conftest import ServerProcess, free_port

STREAMS = 8
ROWS_PER_STREAM = 40
DIM = 64


def milvus_calls(metrics_port: int, operation: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    series = f'lookalike_milvus_seconds_count{{operation="{operation}"}} '
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


@pytest.fixture
def server_with_metrics(tmp_path):
    metrics_port = free_port()
    proc = ServerProcess(tmp_path, "--metrics-port", str(metrics_port))
    try:
        proc.wait_ready(timeout=120)
        yield proc, metrics_port
    finally:
        proc.stop()


def lockstep_stream(address: str, collection: str, stream: int, data: np.ndarray, start: threading.Barrier,
                    acked: list[str]) -> None:
    """Sends one row, then waits for its acknowledgement before the next: alone, every upsert holds one row."""
    answered: queue.Queue[None] = queue.Queue()

    def items():
        for j in range(ROWS_PER_STREAM):
            yield f"s{stream}-{j}", data[stream * ROWS_PER_STREAM + j]
            answered.get(timeout=60)

    with Client(address, collection=collection, timeout=120) as client:
        start.wait(60)
        for result in client.ingest(items()):
            assert result.ok, result
            acked.append(result.id)
            answered.put(None)


def test_concurrent_streams_share_upserts_and_one_flush(server_with_metrics):
    proc, metrics_port = server_with_metrics
    rows = STREAMS * ROWS_PER_STREAM
    data = np.random.default_rng(5).standard_normal((rows, DIM)).astype(np.float32)
    with Client(proc.address) as client:
        client.create_collection("lockstep", "l2", "HNSW", dimension=DIM)
    upserts_before = milvus_calls(metrics_port, "upsert")
    flushes_before = milvus_calls(metrics_port, "flush")
    start = threading.Barrier(STREAMS)
    acked: list[str] = []
    threads = [threading.Thread(target=lockstep_stream, args=(proc.address, "lockstep", i, data, start, acked))
               for i in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(acked) == rows and len(set(acked)) == rows
    upserts = milvus_calls(metrics_port, "upsert") - upserts_before
    # One upsert per row if every stream wrote alone; the eight lockstep streams' rows travel together.
    assert 0 < upserts <= rows / 2, upserts
    time.sleep(2)  # past the settle delay: the streams, which ended together, flushed once (not eight times)
    flushes = milvus_calls(metrics_port, "flush") - flushes_before
    assert 1 <= flushes <= 2, flushes
    with Client(proc.address) as client:
        assert client.describe_collection("lockstep").row_count == rows
        for i in (0, 123, rows - 1):
            stream, j = divmod(i, ROWS_PER_STREAM)
            hit = client.search(ById(f"s{stream}-{j}"), k=1, collection="lockstep")[0]
            assert hit.id == f"s{stream}-{j}"
            np.testing.assert_allclose(client.get([hit.id], collection="lockstep")[hit.id][0], data[i], rtol=1e-6)
        client.drop_collection("lockstep")


def test_a_collection_is_flushed_once_its_last_writing_stream_ends(server_with_metrics):
    proc, metrics_port = server_with_metrics
    data = np.random.default_rng(6).standard_normal((11, DIM)).astype(np.float32)
    with Client(proc.address) as client:
        client.create_collection("staggered", "l2", "HNSW", dimension=DIM)
    flushes_before = milvus_calls(metrics_port, "flush")
    release = threading.Event()
    acked: list[str] = []

    def long_items():
        yield "long-0", data[0]
        release.wait(60)  # the stream stays open, written to, while the short one ends
        yield "long-1", data[1]

    def long_stream() -> None:
        with Client(proc.address, collection="staggered", timeout=120) as client:
            acked.extend(r.id for r in client.ingest(long_items()) if r.ok)

    writer = threading.Thread(target=long_stream)
    writer.start()
    try:
        with Client(proc.address, collection="staggered") as client:
            assert all(r.ok for r in client.ingest((f"short-{j}", data[2 + j]) for j in range(9)))
        time.sleep(2)  # four settle delays past the short stream's end
        assert milvus_calls(metrics_port, "flush") == flushes_before, "flushed while a stream still wrote"
    finally:
        release.set()
        writer.join(60)
    assert acked == ["long-0", "long-1"]
    time.sleep(2)
    assert milvus_calls(metrics_port, "flush") - flushes_before == 1
    with Client(proc.address) as client:
        assert client.describe_collection("staggered").row_count == 11
