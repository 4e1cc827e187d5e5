"""Nothing acknowledged is lost, and the server survives bad input, crashes, SIGTERM and Milvus outages."""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from lookalike import Client, LookalikeClientError
from lookalike.client import CHUNK_BYTES
from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server.embedded_milvus import MilvusLiteServer, standalone
from tests.conftest import ServerProcess

DIM = 1280


def small_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n distinct small JPEGs (decoding and embedding still run in full for each)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def test_large_images_travel_in_chunks_and_the_limit_holds(client, collection, tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (1400, 1400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    big = buf.getvalue()
    assert len(big) > CHUNK_BYTES  # the client must split it
    results = list(client.ingest([("big", big, {"size": len(big)})], collection=collection))
    assert [r.code for r in results] == ["OK"]
    assert client.get(["big"], collection=collection)["big"][1] == {"size": len(big)}
    np.testing.assert_allclose(client.embed([big])[0], client.get(["big"], collection=collection)["big"][0],
                               atol=1e-5)


def test_chunk_and_message_limits(tmp_path):
    proc = ServerProcess(tmp_path, "--max-image-bytes", "100000", "--max-message-bytes", "300000")
    try:
        proc.wait_ready()
        chunk = pb.ImageChunk(data=b"\xff" * 60_000)
        requests = [
            pb.IngestRequest(id="too-big", chunk=chunk),
            pb.IngestRequest(id="too-big", chunk=pb.ImageChunk(data=chunk.data, last=True)),
            pb.IngestRequest(id="unfinished", chunk=chunk),
            pb.IngestRequest(id="fine", vector=pb.Vector(values=[0.1] * DIM)),
        ]
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.ImagesStub(channel)
            replies = list(stub.Ingest(iter(requests), timeout=30))
            assert [(r.id, r.code) for r in replies] == [
                ("too-big", pb.RESOURCE_EXHAUSTED), ("unfinished", pb.INVALID_ARGUMENT), ("fine", pb.OK)]
            assert "100000" in replies[0].message
            assert "last" in replies[1].message
            with pytest.raises(grpc.RpcError) as e:
                stub.Embed(pb.EmbedRequest(items=[pb.ImageItem(id="huge", image=b"\0" * 400_000)]), timeout=30)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "300000" in e.value.details()
    finally:
        assert proc.stop() == 0


def test_metadata_over_the_limit_is_a_per_item_error(client, collection):
    results = list(client.ingest([("fat", [0.1] * DIM, {"blob": "x" * 70_000}), ("thin", [0.2] * DIM, {"a": 1})],
                                 collection=collection))
    assert [r.code for r in results] == ["INVALID_ARGUMENT", "OK"]
    assert "65536" in results[0].message


def test_a_cancelled_stream_loses_nothing_acknowledged(server, client, collection):
    stop_after = 40
    acknowledged = []
    vectors = np.random.default_rng(1).standard_normal((500, DIM)).astype(np.float32)
    with grpc.insecure_channel(server.address) as channel:
        call = pb_grpc.ImagesStub(channel).Ingest(
            pb.IngestRequest(collection=collection, id=f"c{i}", vector=pb.Vector(values=v.tolist()))
            for i, v in enumerate(vectors)
        )
        for reply in call:
            acknowledged.append(reply.id)
            if len(acknowledged) == stop_after:
                call.cancel()
                break
    time.sleep(1)
    stored = client.get([f"c{i}" for i in range(500)], collection=collection, vectors=False)
    assert set(acknowledged) <= set(stored)
    assert client.describe_collection(collection).row_count == len(stored)
    client.wait_until_ready(5)


def test_kill_9_during_ingest_then_resend_what_was_not_acknowledged(tmp_path):
    """5,000 images; the server is SIGKILLed part way; after a restart on the same data, the client sends
    again every item it has no acknowledgement for: exactly 5,000 rows, none lost, none twice."""
    n = 5000
    images = small_jpegs(n)
    ids = [f"img-{i:05d}" for i in range(n)]
    acknowledged: set[str] = set()
    proc = ServerProcess(tmp_path)
    proc.wait_ready()

    def ingest_until_killed() -> str:
        with Client(proc.address, ingest_retries=0) as client:
            try:
                for result in client.ingest(zip(ids, images, strict=True)):
                    assert result.ok, result
                    acknowledged.add(result.id)
                    if len(acknowledged) == 1500:
                        os.kill(proc.proc.pid, signal.SIGKILL)
            except LookalikeClientError as e:
                return e.code
        return "finished"

    assert ingest_until_killed() == "UNAVAILABLE"
    proc.stop()
    assert 1500 <= len(acknowledged) < n
    again = ServerProcess(tmp_path)
    try:
        again.wait_ready()
        with Client(again.address) as client:
            # Everything acknowledged survived the crash.
            assert set(client.get(sorted(acknowledged), vectors=False, metadata=False)) == acknowledged
            missing = [(i, img) for i, img in zip(ids, images, strict=True) if i not in acknowledged]
            assert all(r.ok for r in client.ingest(missing))
            assert client.describe_collection("").row_count == n
            assert len(client.get(ids, vectors=False, metadata=False)) == n
    finally:
        assert again.stop() == 0


def test_sigterm_finishes_what_is_in_flight_and_exits_0(tmp_path):
    proc = ServerProcess(tmp_path)
    proc.wait_ready()
    images = small_jpegs(400, seed=2)
    acknowledged: list[str] = []
    errors: list[str] = []

    def ingest() -> None:
        with Client(proc.address, ingest_retries=0) as client:
            try:
                for result in client.ingest((f"t{i}", img) for i, img in enumerate(images)):
                    acknowledged.append(result.id)
            except LookalikeClientError as e:
                errors.append(e.code)

    worker = threading.Thread(target=ingest)
    worker.start()
    while len(acknowledged) < 50:
        time.sleep(0.05)
    started = time.monotonic()
    # An impatient supervisor: SIGTERM again and again while the server drains and exits. Only the first counts;
    # a later one must not kill the drain, nor the exit after it (when the event loop has closed).
    while proc.proc.poll() is None and time.monotonic() - started < 30:
        proc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
    worker.join(60)
    assert proc.stop() == 0
    assert time.monotonic() - started < 30
    log = proc.log()
    assert "stopping: finishing calls in flight" in log
    assert "SIGTERM while stopping: already stopping" in log
    again = ServerProcess(tmp_path)
    try:
        again.wait_ready()
        with Client(again.address) as client:
            stored = client.get([f"t{i}" for i in range(400)], vectors=False, metadata=False)
            assert set(acknowledged) <= set(stored)
    finally:
        again.stop()


@pytest.mark.parametrize("engine", ["milvus-lite server", pytest.param("standalone", marks=pytest.mark.standalone)])
def test_milvus_outage_fails_fast_turns_not_serving_and_recovers(engine, tmp_path):
    """Milvus stops (the `milvus-lite server`, or the real standalone server) and comes back on the same
    address with the same data: lookalike fails fast meanwhile and recovers without a restart."""
    if engine == "standalone" and not standalone.available():
        pytest.skip(f"the Milvus standalone server is missing: {standalone.INSTALL} (make test does)")
    milvus = (MilvusLiteServer(tmp_path / "milvus") if engine == "milvus-lite server"
              else standalone.MilvusStandalone(tmp_path / "milvus"))
    milvus.start()
    uri = milvus.uri
    proc = ServerProcess(tmp_path / "serve", "--milvus-uri", uri)
    try:
        proc.wait_ready()
        with Client(proc.address, timeout=60) as client:
            assert next(client.ingest([("before", [0.3] * DIM)])).ok
            milvus.stop()
            started = time.monotonic()
            with pytest.raises(LookalikeClientError) as e:
                client.search([0.3] * DIM, k=1)
            assert e.value.code == "UNAVAILABLE"
            assert time.monotonic() - started < 20
            deadline = time.monotonic() + 30
            with grpc.insecure_channel(proc.address) as channel:
                from grpc_health.v1 import health_pb2, health_pb2_grpc

                health = health_pb2_grpc.HealthStub(channel)
                status = None
                while time.monotonic() < deadline:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    time.sleep(0.5)
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
                liveness = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5).status
                assert liveness == health_pb2.HealthCheckResponse.SERVING
                milvus.start()  # same port, same data
                assert milvus.uri == uri
                client.wait_until_ready(120)
            assert client.search([0.3] * DIM, k=1)[0].id == "before"
        assert proc.proc.poll() is None
    finally:
        proc.stop()
        milvus.stop()


def test_calls_past_the_in_flight_limit_get_resource_exhausted_then_recover(tmp_path):
    """Overload: with --max-inflight-requests 2 and two streams open, a third call is refused at once with a
    retry hint; once the streams close, calls go through again."""
    proc = ServerProcess(tmp_path, "--max-inflight-requests", "2")
    release = threading.Event()

    def idle_requests():
        release.wait(30)
        return
        yield  # pragma: no cover

    try:
        proc.wait_ready()
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.ImagesStub(channel)
            opened = [stub.Ingest(idle_requests()) for _ in range(2)]
            time.sleep(1.0)
            query = pb.SearchRequest(queries=[pb.Query(vector=pb.Vector(values=[0.1] * DIM))], k=1)
            with pytest.raises(grpc.RpcError) as e:
                stub.Search(query, timeout=10)
            release.set()
            for call in opened:
                list(call)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "calls in flight, the limit is 2" in e.value.details() and "retry" in e.value.details()
            assert len(stub.Search(query, timeout=30).results) == 1
    finally:
        release.set()
        proc.stop()
