"""A read with no consistency asked sees the caller's own writes (Session, as the proto promises), without
waiting for everyone else's.

Milvus makes a Session read wait until its query node has applied the reader's newest write, and this server
writes for every client through one Milvus connection: while Ingest streams ran, each search waited for the
time tick after the latest upsert, whoever sent it (bench/results/load.json's milvus_stages: that wait was most
of Milvus' tail). OwnWrites remembers which callers (gRPC peers: one client connection each) wrote to which
collection lately. Their reads wait for this server's writes as before; a caller that wrote nothing there reads
what Milvus has applied (at most a time tick behind). An explicit level is used as asked, Session included.
"""

from __future__ import annotations

import time
from collections import OrderedDict

# A caller's reads wait for this server's writes this long after its last write to a collection: a time tick
# is 20 ms; a query node under load was seconds behind at worst.
REMEMBER_SECONDS = 600.0
# (caller, collection) pairs remembered at most; the oldest are forgotten first.
MAX_WRITERS = 100_000


class OwnWrites:
    def __init__(self, remember_s: float = REMEMBER_SECONDS, max_writers: int = MAX_WRITERS) -> None:
        self.remember_s = remember_s
        self.max_writers = max_writers
        self._last_write: OrderedDict[tuple[str, str], float] = OrderedDict()

    def wrote(self, caller: str, collection: str, now: float | None = None) -> None:
        """Called before a caller's write to a collection is made (and so before it is acknowledged)."""
        key = (caller, collection)
        self._last_write[key] = time.monotonic() if now is None else now
        self._last_write.move_to_end(key)
        while len(self._last_write) > self.max_writers:
            self._last_write.popitem(last=False)

    def level(self, caller: str, collection: str, asked: str, now: float | None = None) -> str:
        """The consistency level a caller's read of a collection uses."""
        if asked:
            return asked
        if not caller:
            return "Session"  # a read from no known connection waits for every write, as any read used to
        written = self._last_write.get((caller, collection))
        now = time.monotonic() if now is None else now
        return "Session" if written is not None and now - written < self.remember_s else "Eventually"
