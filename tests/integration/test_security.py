"""Tokens with roles, TLS and mutual TLS, secrets kept out of logs, metrics, limits, data-dir permissions."""

from __future__ import annotations

import asyncio
import stat
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike import AsyncClient, Client, LookalikeClientError
from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, free_port
from tests.support.certs import make_certificates

READ_TOKEN = "read-7f3a9c"
WRITE_TOKEN = "write-s3cr3t-91b2"
VECTOR = (np.ones(1280, dtype=np.float32) / np.sqrt(1280)).tolist()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """One server with tokens, TLS, a metrics port and tight stream limits."""
    folder = tmp_path_factory.mktemp("secured")
    certs = make_certificates(folder / "certs")
    tokens = folder / "tokens.txt"
    tokens.write_text(f"# role token\nread {READ_TOKEN}\nwrite {WRITE_TOKEN}\n")
    metrics_port = free_port()
    proc = ServerProcess(
        folder, "--auth-tokens-file", str(tokens), "--tls-cert", str(certs["server"]), "--tls-key",
        str(certs["server_key"]), "--metrics-port", str(metrics_port), "--max-streams-per-client", "2",
        "--milvus-password", "hunter2-milvus",
    )
    with Client(proc.address, token=READ_TOKEN, ca_cert=certs["ca"]) as client:
        try:
            client.wait_until_ready(90)
        except TimeoutError:
            proc.stop()
            raise
    yield proc, certs, metrics_port
    proc.stop()


def test_tokens_and_roles(secured):
    proc, certs, _ = secured
    with Client(proc.address, ca_cert=certs["ca"]) as anonymous:
        with pytest.raises(LookalikeClientError) as e:
            anonymous.search(VECTOR, k=1)
        assert e.value.code == "UNAUTHENTICATED" and "Bearer" in e.value.details
        with pytest.raises(LookalikeClientError) as e:
            list(anonymous.ingest([("x", VECTOR)]))
        assert e.value.code == "UNAUTHENTICATED"
    with Client(proc.address, ca_cert=certs["ca"], token="forged") as forged:
        with pytest.raises(LookalikeClientError) as e:
            forged.list_collections()
        assert e.value.code == "UNAUTHENTICATED" and "not valid" in e.value.details
    with Client(proc.address, ca_cert=certs["ca"], token=READ_TOKEN) as reader:
        assert reader.describe_collection("").dimension == 1280
        reader.search(VECTOR, k=1)
        with pytest.raises(LookalikeClientError) as e:
            list(reader.ingest([("x", VECTOR)]))
        assert e.value.code == "PERMISSION_DENIED" and "write token" in e.value.details
        with pytest.raises(LookalikeClientError) as e:
            reader.drop_collection("default")
        assert e.value.code == "PERMISSION_DENIED"
    with Client(proc.address, ca_cert=certs["ca"], token=WRITE_TOKEN) as writer:
        assert [r.code for r in writer.ingest([("x", VECTOR)])] == ["OK"]
        assert writer.search(VECTOR, k=1)[0].id == "x"


def test_async_client_sends_its_token_over_tls(secured):
    """AsyncClient's token interceptor and TLS, on every kind of call it makes (unary and the Ingest stream)."""
    proc, certs, _ = secured

    async def body() -> None:
        async with AsyncClient(proc.address, ca_cert=certs["ca"]) as anonymous:
            with pytest.raises(LookalikeClientError) as e:
                await anonymous.search(VECTOR, k=1)
            assert e.value.code == "UNAUTHENTICATED"
        async with AsyncClient(proc.address, ca_cert=certs["ca"], token=READ_TOKEN) as reader:
            assert (await reader.describe_collection("")).dimension == 1280
            with pytest.raises(LookalikeClientError) as e:
                await reader.delete(["async-x"])
            assert e.value.code == "PERMISSION_DENIED"
            # Refused too, and said so: grpc.aio reports a refusal that crosses a write as INTERNAL "Internal
            # error from Core" (most of the time with 50 items), so the client waits for the stream's headers
            # before writing.
            for _ in range(10):
                with pytest.raises(LookalikeClientError) as e:
                    [r async for r in reader.ingest([(f"async-{i}", VECTOR) for i in range(50)])]
                assert e.value.code == "PERMISSION_DENIED", e.value.details
        async with AsyncClient(proc.address, ca_cert=certs["ca"], token=WRITE_TOKEN) as writer:
            assert [r.code async for r in writer.ingest([("async-x", VECTOR)])] == ["OK"]
            assert await writer.delete(["async-x"]) == 1

    asyncio.run(body())


def test_health_and_reflection_stay_open(secured):
    proc, certs, _ = secured
    credentials = grpc.ssl_channel_credentials(root_certificates=certs["ca"].read_bytes())
    with grpc.secure_channel(proc.address, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert "lookalike.v1.Images" in names


def test_plaintext_clients_cannot_talk_to_a_tls_server(secured):
    proc, _, _ = secured
    with Client(proc.address, token=WRITE_TOKEN, timeout=5) as plaintext:
        with pytest.raises(LookalikeClientError) as e:
            plaintext.list_collections()
        assert e.value.code == "UNAVAILABLE"


def test_no_secret_reaches_the_log(secured):
    proc, _, _ = secured
    log = proc.log()
    assert "authentication on: 2 tokens" in log
    assert "TLS" in log
    for secret in (READ_TOKEN, WRITE_TOKEN, "hunter2-milvus"):
        assert secret not in log


def test_the_data_directory_is_owner_only(secured):
    proc, _, _ = secured
    mode = stat.S_IMODE((proc.workdir / "lookalike-data").stat().st_mode)
    assert mode == 0o700


def test_metrics_endpoint(secured):
    proc, certs, port = secured
    searches_ok = 'lookalike_requests_total{code="OK",method="/lookalike.v1.Images/Search"}'

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def count(text: str, series: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " "))

    before = count(scrape(), searches_ok)
    with Client(proc.address, ca_cert=certs["ca"], token=READ_TOKEN) as reader:
        for _ in range(3):
            reader.search(VECTOR, k=1)
    text = scrape()
    assert count(text, searches_ok) == before + 3  # each call counted once, whatever was cached
    assert 'lookalike_requests_total{code="UNAUTHENTICATED"' in text
    assert "lookalike_request_seconds_bucket" in text
    assert 'lookalike_batch_size_count{batcher="search-batcher"}' in text
    assert 'lookalike_milvus_seconds_count{operation="search"}' in text
    assert "lookalike_queue_depth" in text


def test_streams_per_client_are_limited(secured):
    proc, certs, _ = secured
    release = threading.Event()
    opened: list[grpc.Future] = []
    credentials = grpc.ssl_channel_credentials(root_certificates=certs["ca"].read_bytes())
    metadata = [("authorization", f"Bearer {WRITE_TOKEN}")]

    def idle_requests():
        release.wait(30)
        return
        yield  # pragma: no cover

    with grpc.secure_channel(proc.address, credentials) as channel:
        stub = pb_grpc.ImagesStub(channel)
        for _ in range(2):
            call = stub.Ingest(idle_requests(), metadata=metadata)
            opened.append(call)
        time.sleep(1.0)
        third = stub.Ingest(iter([pb.IngestRequest(id="y", vector=pb.Vector(values=VECTOR))]), metadata=metadata)
        with pytest.raises(grpc.RpcError) as e:
            list(third)
        release.set()
        for call in opened:
            list(call)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit is 2" in e.value.details()


def test_mutual_tls(tmp_path):
    certs = make_certificates(tmp_path / "certs")
    proc = ServerProcess(tmp_path, "--tls-cert", str(certs["server"]), "--tls-key", str(certs["server_key"]),
                         "--tls-client-ca", str(certs["ca"]))
    try:
        with Client(proc.address, ca_cert=certs["ca"], client_cert=certs["client"],
                    client_key=certs["client_key"]) as trusted:
            trusted.wait_until_ready(90)
            assert trusted.describe_collection("").dimension == 1280
        with Client(proc.address, ca_cert=certs["ca"], timeout=5) as stranger:
            with pytest.raises(LookalikeClientError) as e:
                stranger.list_collections()
            assert e.value.code == "UNAVAILABLE"
        assert "mutual TLS" in proc.log()
    finally:
        assert proc.stop() == 0
