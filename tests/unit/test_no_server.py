"""A call to an address where no lookalike server listens says so, and how to start one or where to point,
instead of gRPC's bare `UNAVAILABLE: connections to all backends failing`."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lookalike import AsyncClient, Client
from lookalike.client import LookalikeClientError
from lookalike.no_server import call_details
from tests.conftest import free_port


def _assert_says_no_server(error: LookalikeClientError, server: str) -> None:
    assert error.code == "UNAVAILABLE"  # callers that check the code see what they saw before
    message = str(error)
    assert f"no lookalike server answers at {server}" in message
    assert "lookalike serve" in message and "--server" in message


CALLS = {
    "list_collections": lambda client: client.list_collections(),
    "search": lambda client: client.search(np.ones(4, dtype=np.float32), k=1),
    "ingest": lambda client: list(client.ingest([("a", np.ones(4, dtype=np.float32))])),
}


@pytest.mark.parametrize("call", CALLS)
def test_a_client_call_with_nothing_listening_says_no_server_answers(call):
    server = f"127.0.0.1:{free_port()}"
    with Client(server, timeout=10) as client, pytest.raises(LookalikeClientError) as caught:
        CALLS[call](client)
    _assert_says_no_server(caught.value, server)


def test_the_async_client_says_the_same():
    server = f"127.0.0.1:{free_port()}"

    async def call() -> None:
        async with AsyncClient(server, timeout=10) as client:
            await client.list_collections()

    with pytest.raises(LookalikeClientError) as caught:
        asyncio.run(call())
    _assert_says_no_server(caught.value, server)


def test_a_name_that_does_not_resolve_says_the_same():
    with Client("nosuchhost.invalid:50051", timeout=10) as client, pytest.raises(LookalikeClientError) as caught:
        client.list_collections()
    _assert_says_no_server(caught.value, "nosuchhost.invalid:50051")


def test_a_server_that_answers_unavailable_keeps_its_own_message():
    details = "Milvus does not answer: connection lost (health checks every 5 s)"
    assert call_details("UNAVAILABLE", details, "h:1") == details
    refused = "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused"
    assert call_details("INTERNAL", refused, "h:1") == refused
    assert call_details("UNAVAILABLE", refused, "h:1").startswith("no lookalike server answers at h:1: ")
