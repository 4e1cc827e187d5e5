"""Bulk pools run below the server's priority; interactive pools keep it."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from lookalike_server.thread_priority import thread_pool


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are a Linux feature")
def test_bulk_pool_threads_run_below_the_process_priority():
    base = _nice()
    with thread_pool(2, "bulk", lower_by=5) as bulk, thread_pool(1, "interactive") as interactive:
        bulk_nices = {bulk.submit(_nice).result() for _ in range(4)}
        interactive_nice = interactive.submit(_nice).result()
    assert bulk_nices == {min(19, base + 5)}
    assert interactive_nice == base
    assert _nice() == base, "the calling thread keeps its priority"
