"""Milvus Lite in this process takes one call at a time: a flush from one thread never hides rows from a
search on another.

Milvus Lite's flush swaps in an empty memtable first and shows the flushed segment only once its file is
written, and its searches read both without a lock: a search in between missed every row of the memtable.
The server calls Milvus from more than one thread (the store pool, and the recall calibration, which
flushes), so the Store itself lets one call in at a time.
"""

from __future__ import annotations

import threading

import numpy as np

from lookalike_server.config import ServerConfig
from lookalike_server.store import CollectionSpec, Store

DIM = 64
ROWS_PER_FLUSH = 200
FLUSHES = 40  # before the lock: 2 to 4 of them hid rows from a count or a search beside them


def test_a_flush_on_another_thread_never_hides_stored_rows_from_a_search(tmp_path):
    store = Store(ServerConfig(data_dir=tmp_path / "data", milvus_embedded="lite"))
    spec = CollectionSpec(name="raced", metric="ip", index_type="FLAT", model="", dimension=DIM)
    store.create(spec)
    rng = np.random.default_rng(11)
    query = rng.standard_normal((1, DIM)).astype(np.float32)
    stored = 0
    shortfalls: list[tuple[str, int, int]] = []  # (call, rows stored, rows it saw)
    done = threading.Event()

    def read_all_the_time() -> None:
        while not done.is_set():
            expected = stored
            counted = store.row_count(spec.name)
            if counted < expected:
                shortfalls.append(("count", expected, counted))
            expected = stored
            found = len(store.search(spec.name, spec, query, 16_000, with_vectors=False)[0])
            if found < expected:
                shortfalls.append(("search", expected, found))

    searcher = threading.Thread(target=read_all_the_time)
    searcher.start()
    try:
        for batch in range(FLUSHES):
            ids = [f"b{batch}-{i}" for i in range(ROWS_PER_FLUSH)]
            store.upsert(spec.name, ids, rng.standard_normal((ROWS_PER_FLUSH, DIM)).astype(np.float32),
                         [{} for _ in ids])
            stored += ROWS_PER_FLUSH
            store.flush(spec.name)
    finally:
        done.set()
        searcher.join(60)
        store.close()
    assert stored == ROWS_PER_FLUSH * FLUSHES
    assert not shortfalls, f"reads beside a flush missed stored rows (call, stored, seen): {shortfalls[:5]}"
