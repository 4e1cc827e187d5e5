"""Milvus Lite in this process runs a write alone: a flush from one thread never hides rows from a search on
another. Reads run side by side: a long read (the recall calibration reads every row) holds up no search.

Milvus Lite's flush swaps in an empty memtable first and shows the flushed segment only once its file is
written, and its searches read both without a lock: a search in between missed every row of the memtable.
The server calls Milvus from more than one thread (the store pool, and the recall calibration, which
flushes), so the Store itself lets a write in only alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

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


def _lite_store_with_rows(tmp_path, rows: int = 50) -> tuple[Store, CollectionSpec, np.ndarray]:
    store = Store(ServerConfig(data_dir=tmp_path / "data", milvus_embedded="lite"))
    spec = CollectionSpec(name="shared", metric="ip", index_type="FLAT", model="", dimension=DIM)
    store.create(spec)
    vectors = np.random.default_rng(5).standard_normal((rows, DIM)).astype(np.float32)
    store.upsert(spec.name, [f"r{i}" for i in range(rows)], vectors, [{} for _ in range(rows)])
    return store, spec, vectors


@contextlib.contextmanager
def _a_read_in_progress(store: Store, collection: str, events: list[str] | None = None) -> Iterator[None]:
    """Inside, a read (a row count of the collection, from another thread) is blocked inside Milvus: a long
    read in progress. On leaving, it is let go and finishes; it notes "read done" in events as it returns,
    still inside the store's call."""
    entered, release = threading.Event(), threading.Event()
    real_query = store.client.query

    def held_query(*args, **kwargs):
        if entered.is_set():
            return real_query(*args, **kwargs)
        entered.set()
        release.wait(30)
        rows = real_query(*args, **kwargs)
        if events is not None:
            events.append("read done")
        return rows

    held_query.__name__ = "query"
    store.client.query = held_query
    counter = threading.Thread(target=store.row_count, args=(collection,))
    counter.start()
    try:
        assert entered.wait(10)
        yield
    finally:
        release.set()
        counter.join(30)


def test_a_search_runs_while_a_long_read_is_in_progress(tmp_path):
    store, spec, vectors = _lite_store_with_rows(tmp_path)
    try:
        with _a_read_in_progress(store, spec.name):
            found: list[int] = []
            searcher = threading.Thread(
                target=lambda: found.append(len(store.search(spec.name, spec, vectors[:1], 5, with_vectors=False)[0]))
            )
            searcher.start()
            searcher.join(10)
            assert found == [5], "the search waited for the read in progress"
    finally:
        store.close()


def test_a_flush_waits_until_the_read_in_progress_is_done(tmp_path):
    store, spec, _ = _lite_store_with_rows(tmp_path)
    events: list[str] = []
    real_flush = store.client.flush

    def flush(*args, **kwargs):
        events.append("flush")
        return real_flush(*args, **kwargs)

    flush.__name__ = "flush"
    store.client.flush = flush

    with _a_read_in_progress(store, spec.name, events):
        flusher = threading.Thread(target=store.flush, args=(spec.name,))
        flusher.start()
        flusher.join(0.5)
        assert "flush" not in events, "Milvus Lite flushed beside a read"
    flusher.join(30)
    store.close()
    assert events == ["read done", "flush"]
