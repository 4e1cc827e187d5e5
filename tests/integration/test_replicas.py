"""Stateless replicas over one shared Milvus: data and collections written through one are served by another."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np

from lookalike import ById, Client
from tests.conftest import ServerProcess

DIM = 1280


def replica(tmp_path_factory, uri: str) -> ServerProcess:
    proc = ServerProcess(tmp_path_factory.mktemp("replica"), "--milvus-uri", uri)
    proc.wait_ready(timeout=120)
    return proc


def test_ingest_through_one_replica_search_through_another(milvus_server_uri, tmp_path_factory, photos_dir):
    a = replica(tmp_path_factory, milvus_server_uri)
    b = None
    try:
        with Client(a.address) as through_a:
            through_a.create_collection("shared_photos", "cosine", "HNSW")
            results = list(through_a.ingest_folder(photos_dir, collection="shared_photos"))
            assert all(r.ok for r in results)
        # A replica started later discovers the collection from Milvus alone.
        b = replica(tmp_path_factory, milvus_server_uri)
        with Client(b.address) as through_b:
            listed = {c.name: c for c in through_b.list_collections()}
            assert listed["shared_photos"].row_count == len(results)
            assert listed["shared_photos"].index_type == "HNSW"
            for result in results:
                hits = through_b.search(ById(result.id), k=1, collection="shared_photos", consistency="Strong")
                assert hits[0].id == result.id
            hits = through_b.search(photos_dir / "coffee.jpg", k=1, collection="shared_photos", consistency="Strong")
            assert hits[0].id == "coffee.jpg"
            through_b.drop_collection("shared_photos")
    finally:
        assert a.stop() == 0
        if b:
            assert b.stop() == 0


def test_creating_the_same_collection_from_two_replicas(milvus_server_uri, tmp_path_factory):
    a, b = replica(tmp_path_factory, milvus_server_uri), replica(tmp_path_factory, milvus_server_uri)
    try:
        with Client(a.address) as ca, Client(b.address) as cb:
            outcomes: list[str] = []

            def create(client: Client) -> None:
                try:
                    client.create_collection("race", "ip", "FLAT")
                    outcomes.append("created")
                except Exception as e:
                    outcomes.append(getattr(e, "code", repr(e)))

            threads = [threading.Thread(target=create, args=(c,)) for c in (ca, cb)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) in (["ALREADY_EXISTS", "created"], ["created", "created"])
            assert cb.describe_collection("race").metric == "ip"
            ca.drop_collection("race")
    finally:
        a.stop()
        b.stop()


def test_a_killed_replica_loses_no_acknowledged_row(milvus_lite_server_uri, tmp_path_factory):
    a, b = replica(tmp_path_factory, milvus_lite_server_uri), replica(tmp_path_factory, milvus_lite_server_uri)
    n = 600
    data = np.random.default_rng(5).standard_normal((n, DIM)).astype(np.float32)
    try:
        with Client(f"{a.address},{b.address}") as balanced:
            balanced.create_collection("survivors", "cosine", "FLAT")
            acknowledged: set[str] = set()
            for i, result in enumerate(balanced.ingest(((f"r{j}", data[j]) for j in range(n)), "survivors")):
                assert result.ok, result
                acknowledged.add(result.id)
                if i == n // 4:
                    # Kill whichever replica is serving this stream, mid-stream, without warning.
                    for proc in (a, b):
                        os.kill(proc.proc.pid, signal.SIGKILL)
                        break
            assert len(acknowledged) == n
            survivor = b if a.proc.poll() is not None else a
            with Client(survivor.address) as direct:
                # The loss check reads every row back by id; count(*) is only Milvus' tally of them.
                assert set(direct.get([f"r{j}" for j in range(n)], "survivors", vectors=False)) == acknowledged
                counts = [direct.describe_collection("survivors").row_count]
                # Milvus Lite's count(*) read 0 here once in CI with all 600 acknowledged (not reproduced in
                # 30 local runs): polled for a while, and every count seen is reported if it never matches.
                deadline = time.monotonic() + 30
                while counts[-1] != n and time.monotonic() < deadline:
                    time.sleep(0.5)
                    counts.append(direct.describe_collection("survivors").row_count)
                assert counts[-1] == n, f"row counts seen: {counts}"
            # Searches through the balanced client carry on through the survivor.
            for j in range(0, n, 97):
                assert balanced.search(data[j], k=1, collection="survivors")[0].id == f"r{j}"
            balanced.drop_collection("survivors")
    finally:
        a.stop()
        b.stop()
