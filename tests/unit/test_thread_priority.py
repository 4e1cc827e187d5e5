"""Bulk pools run below the server's priority and step aside for interactive calls; interactive pools keep it."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from lookalike_server.thread_priority import BulkGate, thread_pool


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


def test_bulk_tasks_wait_while_an_interactive_call_is_in_flight():
    gate = BulkGate(max_pause_s=5.0)
    started = threading.Event()
    with thread_pool(1, "bulk", gate=gate) as bulk:
        with gate.interactive():
            task = bulk.submit(started.set)
            assert not started.wait(0.3), "a bulk task started while an interactive call was in flight"
        assert task.result(timeout=5) is None
    assert started.is_set()
    assert gate.pauses == 1


def test_a_bulk_task_waits_for_interactive_calls_at_most_the_pause_limit():
    gate = BulkGate(max_pause_s=0.2)
    with thread_pool(1, "bulk", gate=gate) as bulk, gate.interactive():
        # The interactive call never ends within the test: bulk work still moves after the limit.
        assert bulk.submit(lambda: "done").result(timeout=5) == "done"


def test_interactive_calls_nest_and_bulk_work_resumes_after_the_last():
    gate = BulkGate(max_pause_s=5.0)
    started = threading.Event()
    with thread_pool(1, "bulk", gate=gate) as bulk:
        with gate.interactive():
            with gate.interactive():
                bulk.submit(started.set)
            assert not started.wait(0.2), "bulk work resumed while one interactive call was still in flight"
        assert started.wait(5)
