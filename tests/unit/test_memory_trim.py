"""The heap trimmer: it trims when asked and on its own schedule, and stops cleanly."""

from __future__ import annotations

import threading

import pytest

from lookalike_server.memory_trim import MemoryTrimmer, _malloc_trim

pytestmark = pytest.mark.skipif(_malloc_trim() is None, reason="no glibc malloc_trim here")


def test_trim_now_returns_freed_memory_and_counts():
    trimmer = MemoryTrimmer()
    blocks = [bytearray(64 * 1024) for _ in range(1000)]
    del blocks
    trimmer.trim_now()
    assert trimmer.trims == 1


def test_the_thread_trims_on_its_schedule_and_stops():
    trimmer = MemoryTrimmer(every_s=0.01)
    done = threading.Event()
    original = trimmer.trim_now

    def counting() -> None:
        original()
        if trimmer.trims >= 3:
            done.set()

    trimmer.trim_now = counting  # type: ignore[method-assign]
    trimmer.start()
    try:
        assert done.wait(30)
    finally:
        trimmer.stop()
    assert not any(t.name == "memory-trim" for t in threading.enumerate())
