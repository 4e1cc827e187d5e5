"""Bulk work runs on lower-priority threads, so the kernel gives the cores to interactive calls first, and
it steps aside while an interactive call is in flight (BulkGate)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

# Nice 4 gives a bulk thread about 40% of a normal thread's CPU weight. Measured on 2 cores, 8 ingest streams
# and one Embed call every 100 ms: Embed p50 45 ms with no nice, 30 ms at 4, 24 ms at 10; ingest 134 img/s
# at 0 and at 4, but 118 at 10 (the bulk threads then lose the cores to the clients and Milvus too).
BULK_NICE = 4
# The longest a bulk thread waits for interactive calls to finish before its next unit of work: under a
# constant stream of interactive calls, bulk work still moves.
MAX_BULK_PAUSE_SECONDS = 0.05


def lower_this_thread(by: int = BULK_NICE) -> None:
    """Lowers the calling thread's priority by `by` nice steps (Linux: a thread id names one thread)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (AttributeError, OSError) as e:  # not Linux, or not allowed: bulk work just keeps its priority
        log.debug("could not lower a bulk thread's priority: %s", e)


class BulkGate:
    """Bulk threads wait to start their next unit of work (a decode, an inference batch) while interactive
    calls are in flight.

    A nice level only weighs the cores' time: a bulk inference batch running beside an Embed call still took
    a share of the core (and of its hyperthread sibling), and an Embed's decode and inference took 20-50 ms
    under ingest against 10 idle. A bulk unit already running finishes; new ones wait, at most
    MAX_BULK_PAUSE_SECONDS each.
    """

    def __init__(self, max_pause_s: float = MAX_BULK_PAUSE_SECONDS) -> None:
        self.max_pause_s = max_pause_s
        self._lock = threading.Lock()
        self._in_flight = 0
        self._clear = threading.Event()
        self._clear.set()
        self.pauses = 0  # bulk units that waited, for tests and metrics

    @contextlib.contextmanager
    def interactive(self) -> Iterator[None]:
        """Marks an interactive call in flight for the duration of the block (any thread, or across awaits)."""
        with self._lock:
            self._in_flight += 1
            self._clear.clear()
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._clear.set()

    def pause_bulk(self) -> None:
        """Called by a bulk thread before a unit of work: returns once no interactive call is in flight."""
        if not self._clear.is_set():
            self.pauses += 1
            self._clear.wait(self.max_pause_s)


class _GatedPool(ThreadPoolExecutor):
    """A pool whose every task first lets interactive calls in flight finish (BulkGate.pause_bulk)."""

    def __init__(self, gate: BulkGate, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(self._gated, fn, *args, **kwargs)

    def _gated(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._gate.pause_bulk()
        return fn(*args, **kwargs)


def thread_pool(workers: int, name: str, lower_by: int = 0, gate: BulkGate | None = None) -> ThreadPoolExecutor:
    """A pool whose threads run `lower_by` nice steps below the server's own priority, and whose tasks step
    aside for interactive calls when given a gate."""
    options: dict[str, Any] = {"thread_name_prefix": name}
    if lower_by:
        options.update(initializer=lower_this_thread, initargs=(lower_by,))
    if gate is not None:
        return _GatedPool(gate, workers, **options)
    return ThreadPoolExecutor(workers, **options)
