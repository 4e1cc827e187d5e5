"""The pipeline's one way into the store from the event loop: a thread pool sized for the Milvus kind, and a
fail-fast while the server's health watchdog knows Milvus to be down."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import Unavailable
from ..store import Store


class StoreCalls:
    def __init__(self, store: Store) -> None:
        self.store = store
        # Milvus Lite runs in this process and is not known to be thread-safe: one caller at a time.
        self.pool = ThreadPoolExecutor(1 if store.is_lite else 8, thread_name_prefix="milvus")
        # Why Milvus is unavailable, while the server's health watchdog finds it so ("" when it answers).
        self.down = ""

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` (a Store method) on the store's threads."""
        self.check()
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def check(self) -> None:
        # While Milvus is known to be down, calls fail at once instead of waiting on a half-started server.
        if self.down:
            raise Unavailable(self.down)

    async def ping(self) -> None:
        """Raises a LookalikeError unless Milvus answers; the health watchdog's probe, never gated."""
        await asyncio.get_running_loop().run_in_executor(self.pool, self.store.ping)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
