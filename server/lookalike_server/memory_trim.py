"""Gives freed heap memory back to the system now and then (glibc's malloc_trim), so the server's RSS follows
what it holds rather than its high-water mark.

A recall calibration reads every row of a collection in pages and frees them again (through pymilvus' Python
lists of floats on Milvus Lite in-process, several times the vectors' size); glibc keeps such freed memory in
its arenas, and the RSS stepped up with each calibration under ingest (bench/results/load.json,
scan_memory.json).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_EVERY_SECONDS = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS): nothing to do there."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryTrimmer:
    """A daemon thread that calls malloc_trim(0) every `every_s` seconds until stopped."""

    def __init__(self, every_s: float = TRIM_EVERY_SECONDS) -> None:
        self.every_s = every_s
        self.trims = 0
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._trim is None:
            log.debug("no malloc_trim here: freed heap memory stays with the allocator")
            return
        self._thread = threading.Thread(target=self._run, name="memory-trim", daemon=True)
        self._thread.start()

    def trim_now(self) -> None:
        if self._trim is not None:
            self._trim(0)
            self.trims += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.trim_now()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
