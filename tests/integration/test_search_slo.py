"""The Search latency target on a running server: bulk work yields while searches run and returns when they stop;
nothing an Ingest stream sends is lost or doubled while it yields; deadlines hold; the metrics are served."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest

from lookalike import Client, LookalikeClientError
from tests.conftest import ServerProcess, free_port

STREAMS = 4
ITEMS_PER_STREAM = 24


@pytest.fixture(scope="module")
def throttled_server(tmp_path_factory):
    # A target no search can meet: the throttle engages as soon as searches run.
    metrics_port = free_port()
    proc = ServerProcess(tmp_path_factory.mktemp("slo"), "--search-p99-target-ms", "0.01",
                         "--metrics-port", str(metrics_port))
    proc.metrics_port = metrics_port
    try:
        proc.wait_ready(timeout=120)
        yield proc
    finally:
        proc.stop()


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def metric(port: int, name: str) -> float:
    for line in scrape(port).splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not among the server's metrics")


def test_throttled_ingest_stores_every_item_once_and_the_throttle_releases(throttled_server, photos_dir):
    port = throttled_server.metrics_port
    photos = [p.read_bytes() for p in sorted(photos_dir.glob("*.jpg"))]
    name = "slo_ingest"
    with Client(throttled_server.address, timeout=120) as client:
        client.create_collection(name, "cosine", "FLAT")
        assert [r.ok for r in client.ingest([("seed", photos[0])], collection=name)] == [True]
        query = client.embed([photos[0]])[0]
    engaged_before = metric(port, "lookalike_ingest_throttle_engagements_total")
    searching = threading.Event()
    searching.set()
    search_errors: list[str] = []
    shares_seen: list[float] = []

    def search_until_done() -> None:
        with Client(throttled_server.address, collection=name, timeout=60) as searcher:
            while searching.is_set():
                try:
                    searcher.search(query, k=3)
                except LookalikeClientError as e:
                    search_errors.append(e.code)
                shares_seen.append(metric(port, "lookalike_ingest_bulk_share"))

    acknowledged: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    lock = threading.Lock()

    def stream(s: int) -> None:
        items = ((f"st{s}-{i}", photos[(s + i) % len(photos)]) for i in range(ITEMS_PER_STREAM))
        with Client(throttled_server.address, collection=name, timeout=300) as c:
            for result in c.ingest(items):
                with lock:
                    acknowledged[result.id] += 1
                    codes[result.code] += 1

    searcher_thread = threading.Thread(target=search_until_done)
    searcher_thread.start()
    try:
        # The throttle is engaged before the streams start, so they run throttled throughout.
        deadline = time.monotonic() + 60
        while metric(port, "lookalike_ingest_bulk_share") >= 1.0:
            assert time.monotonic() < deadline, "the throttle never engaged under a constant search load"
            time.sleep(0.1)
        streams = [threading.Thread(target=stream, args=(s,)) for s in range(STREAMS)]
        for t in streams:
            t.start()
        for t in streams:
            t.join(300)
        assert not any(t.is_alive() for t in streams)
        # Deadlines still hold while bulk work yields: an expired search fails as such, a live one answers.
        with Client(throttled_server.address, collection=name, timeout=0.001) as hurried, \
                pytest.raises(LookalikeClientError) as expired:
            hurried.search(query, k=3)
        assert expired.value.code == "DEADLINE_EXCEEDED"
    finally:
        searching.clear()
        searcher_thread.join(60)
    sent = {f"st{s}-{i}" for s in range(STREAMS) for i in range(ITEMS_PER_STREAM)}
    assert codes == Counter({"OK": len(sent)})
    assert set(acknowledged) == sent and set(acknowledged.values()) == {1}  # none lost, none twice
    with Client(throttled_server.address) as client:
        assert client.describe_collection(name).row_count == len(sent) + 1
        found = set(client.get(sorted(sent), collection=name, vectors=False, metadata=False))
    assert found == sent
    assert not search_errors
    assert min(shares_seen) < 1.0
    assert metric(port, "lookalike_ingest_throttle_engagements_total") > engaged_before
    # With the searches gone, bulk work returns to full speed.
    deadline = time.monotonic() + 60
    while metric(port, "lookalike_ingest_bulk_share") < 1.0:
        assert time.monotonic() < deadline, "the throttle did not release once searches stopped"
        time.sleep(0.1)


def test_the_search_stage_and_event_loop_metrics_are_served(throttled_server):
    with Client(throttled_server.address, timeout=60) as client:
        client.create_collection("slo_metrics", "cosine", "FLAT")
        stored = client.ingest([("v", np.ones(1280, dtype=np.float32))], collection="slo_metrics")
        assert [r.ok for r in stored] == [True]
        client.search(np.ones(1280, dtype=np.float32), k=1, collection="slo_metrics")
    text = scrape(throttled_server.metrics_port)
    for stage in ("vectors", "queue", "milvus", "rank", "total"):
        assert f'lookalike_search_stage_seconds_count{{stage="{stage}"}}' in text
    for name in ("lookalike_event_loop_lag_seconds_count", "lookalike_ingest_bulk_share",
                 "lookalike_search_p99_recent_seconds", "lookalike_ingest_throttle_engagements_total",
                 'lookalike_batch_queue_seconds_count{batcher="search-batcher"}'):
        assert name in text
    assert metric(throttled_server.metrics_port, "lookalike_event_loop_lag_seconds_count") > 0
