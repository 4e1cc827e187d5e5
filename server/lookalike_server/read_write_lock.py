"""A lock that lets readers in together and a writer in alone; writers go in the order they asked, and a waiting
writer goes before readers that come after it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ReadWriteLock:
    """Not re-entrant: a thread holding it must not take it again (a waiting writer would then deadlock it).

    Writers take tickets and go in turn: a thread that writes in a loop cannot keep the lock from another
    writer (a plain condition let the thread that just released it take it straight back, every time).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._readers = 0
        self._writing = False
        self._tickets = 0  # writers that asked
        self._served = 0  # writers let in, or gone before their turn
        self._abandoned: set[int] = set()  # tickets of writers interrupted while waiting

    @property
    def writers_waiting(self) -> int:
        with self._changed:
            return self._tickets - self._served - len(self._abandoned) - self._writing

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._changed:
            while self._writing or self._served < self._tickets:
                self._changed.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._changed:
                self._readers -= 1
                if not self._readers:
                    self._changed.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._changed:
            ticket = self._tickets
            self._tickets += 1
            try:
                while self._writing or self._readers or self._served != ticket:
                    self._changed.wait()
            except BaseException:  # interrupted while waiting: the turn passes on
                self._abandoned.add(ticket)
                self._next_turn()
                raise
            self._writing = True
        try:
            yield
        finally:
            with self._changed:
                self._writing = False
                self._served += 1
                self._next_turn()

    def _next_turn(self) -> None:
        while self._served in self._abandoned:
            self._abandoned.remove(self._served)
            self._served += 1
        self._changed.notify_all()
