"""ReadWriteLock: readers together, a writer alone, writers in turn, and a waiting writer before readers that come
after it."""

from __future__ import annotations

import threading

from lookalike_server.read_write_lock import ReadWriteLock

JOIN_S = 10  # only a broken lock makes a thread wait this long


def _in_thread(fn) -> tuple[threading.Thread, threading.Event]:
    """Runs fn on a thread; the event is set once fn has returned."""
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def _noting(section, events: list[str], label: str):
    """A function that takes the lock's section (lock.reading or lock.writing) and notes label inside it."""

    def run() -> None:
        with section():
            events.append(label)

    return run


def _wait_for_writers(lock: ReadWriteLock, count: int) -> None:
    for _ in range(1000):
        if lock.writers_waiting == count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{lock.writers_waiting} writers waiting, not {count}")


def test_a_reader_gets_in_while_another_reader_holds_the_lock():
    lock = ReadWriteLock()
    with lock.reading():
        thread, done = _in_thread(lambda: lock.reading().__enter__())
        thread.join(JOIN_S)
        assert done.is_set(), "a second reader waited for the first"


def test_a_writer_waits_for_the_readers_and_then_runs_alone():
    lock = ReadWriteLock()
    events: list[str] = []
    reading = lock.reading()
    reading.__enter__()
    writer, wrote = _in_thread(_noting(lock.writing, events, "write"))
    assert not wrote.wait(0.3), "the writer ran while a reader held the lock"
    events.append("reader left")
    reading.__exit__(None, None, None)
    writer.join(JOIN_S)
    assert events == ["reader left", "write"]


def test_a_waiting_writer_goes_before_readers_that_come_after_it():
    lock = ReadWriteLock()
    order: list[str] = []
    first = lock.reading()
    first.__enter__()
    writer, _ = _in_thread(_noting(lock.writing, order, "write"))
    _wait_for_writers(lock, 1)
    late_reader, late_read = _in_thread(_noting(lock.reading, order, "late read"))
    assert not late_read.wait(0.3), "a reader overtook the waiting writer"
    first.__exit__(None, None, None)
    writer.join(JOIN_S)
    late_reader.join(JOIN_S)
    assert order == ["write", "late read"]


def test_readers_wait_while_a_writer_holds_the_lock():
    lock = ReadWriteLock()
    writing = lock.writing()
    writing.__enter__()
    reader, read = _in_thread(lambda: lock.reading().__enter__())
    assert not read.wait(0.3), "a reader got in beside the writer"
    writing.__exit__(None, None, None)
    reader.join(JOIN_S)
    assert read.is_set()


def test_a_writer_that_writes_again_at_once_lets_the_waiting_writer_go_first():
    lock = ReadWriteLock()
    order: list[str] = []
    first = lock.writing()
    first.__enter__()
    waiting, _ = _in_thread(_noting(lock.writing, order, "other"))
    _wait_for_writers(lock, 1)
    first.__exit__(None, None, None)
    _noting(lock.writing, order, "again")()  # straight back: a plain condition let this in before the other
    waiting.join(JOIN_S)
    assert order == ["other", "again"]
