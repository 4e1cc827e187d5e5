"""The micro-batcher groups concurrent items, respects its size limit and fails only what failed."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from lookalike_server.batcher import MicroBatcher


def run(coro):
    return asyncio.run(coro)


def test_concurrent_items_are_batched_up_to_the_limit():
    sizes: list[int] = []

    def double(items):
        sizes.append(len(items))
        return [2 * i for i in items]

    async def main():
        batcher = MicroBatcher(double, ThreadPoolExecutor(1), max_batch_size=8, max_queue_delay=0.05)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.close()
        return results

    assert run(main()) == [2 * i for i in range(20)]
    assert max(sizes) == 8
    assert sum(sizes) == 20
    assert len(sizes) == 3


def test_a_failed_batch_fails_its_callers_and_the_batcher_goes_on():
    def fragile(items):
        if "boom" in items:
            raise ValueError("boom")
        return items

    async def main():
        batcher = MicroBatcher(fragile, ThreadPoolExecutor(1), max_batch_size=1, max_queue_delay=0)
        batcher.start()
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit("boom")
        result = await batcher.submit("fine")
        await batcher.close()
        return result

    assert run(main()) == "fine"
