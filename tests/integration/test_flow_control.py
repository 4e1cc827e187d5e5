"""Back-pressure on the wire: a client sending faster than the server embeds stays within a fixed window."""

from __future__ import annotations

import threading

import pytest

from lookalike import Client
from tests.conftest import ServerProcess

ITEM_BYTES = 256 * 1024
WINDOW_BYTES = 256 * 1024
ITEMS = 120


@pytest.fixture
def narrow_server(tmp_path):
    # One item queued per stream on the server, and a 256 KiB HTTP/2 window: what a client can have sent
    # but not yet had acknowledged is then a handful of items, whatever gRPC's BDP probing would allow.
    proc = ServerProcess(tmp_path, "--stream-window-bytes", str(WINDOW_BYTES), env={"LOOKALIKE_INGEST_WINDOW": "1"})
    try:
        proc.wait_ready(timeout=120)
        yield proc
    finally:
        proc.stop()


def test_a_fast_client_runs_only_a_window_ahead_of_the_server(narrow_server, photos_dir):
    photo = sorted(photos_dir.glob("*.jpg"))[0].read_bytes()
    # A JPEG decoder stops at the end-of-image marker: the padding only makes each message 256 KiB, so the
    # network moves items far faster than the server embeds them.
    padded = photo + b"\0" * (ITEM_BYTES - len(photo))
    lock = threading.Lock()
    pulled = acknowledged = most_ahead = 0

    def items():
        nonlocal pulled
        for i in range(ITEMS):
            with lock:
                pulled += 1
            yield f"p{i}", padded

    with Client(narrow_server.address, timeout=120) as client:
        client.create_collection("narrow", "cosine", "FLAT")
        for result in client.ingest(items(), collection="narrow"):  # the client's own window is 256 items
            assert result.ok, result
            with lock:
                acknowledged += 1
                most_ahead = max(most_ahead, pulled - acknowledged)
        assert len(client.get(["p0", f"p{ITEMS - 1}"], collection="narrow")) == 2
    assert acknowledged == ITEMS
    # Held on the server: the item being embedded, one queued, one read and waiting for room; in the window:
    # one message; in the client's gRPC buffers: a few. BDP probing let it run 25 or more items ahead.
    assert most_ahead <= 10, f"the client ran {most_ahead} items ahead of the server's acknowledgements"
