"""The micro-batcher groups concurrent items, respects its size limit and fails only what failed."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lookalike_server.batcher import BULK, INTERACTIVE, MicroBatcher
from lookalike_server.errors import DeadlineExceeded


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


def test_max_queue_delay_is_respected():
    """A lone item waits at most about max_queue_delay for company before it runs."""
    seen: list[float] = []

    def record(items):
        seen.append(time.monotonic())
        return items

    async def main():
        batcher = MicroBatcher(record, ThreadPoolExecutor(1), max_batch_size=8, max_queue_delay=0.2)
        batcher.start()
        started = time.monotonic()
        await batcher.submit("alone")
        await batcher.close()
        return started

    started = run(main())
    assert 0.15 <= seen[0] - started < 2.0


def test_interactive_items_overtake_bulk_ones():
    order: list[str] = []
    gate = threading.Event()

    def work(items):
        gate.wait(5)
        order.extend(items)
        return items

    async def main():
        batcher = MicroBatcher(work, ThreadPoolExecutor(1), max_batch_size=2, max_queue_delay=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("bulk-0", BULK))
        await asyncio.sleep(0.05)  # bulk-0 is now running, held at the gate
        rest = [asyncio.ensure_future(batcher.submit(f"bulk-{i}", BULK)) for i in (1, 2, 3)]
        urgent = asyncio.ensure_future(batcher.submit("search", INTERACTIVE))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, urgent, *rest)
        await batcher.close()

    run(main())
    assert order[0] == "bulk-0"
    assert order[1] == "search"
    assert order.index("search") < order.index("bulk-2")


def test_expired_items_are_dropped_not_computed():
    computed: list[str] = []
    gate = threading.Event()

    def work(items):
        gate.wait(5)
        computed.extend(items)
        return items

    async def main():
        loop = asyncio.get_running_loop()
        batcher = MicroBatcher(work, ThreadPoolExecutor(1), max_batch_size=1, max_queue_delay=0)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit("blocker"))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(batcher.submit("late", INTERACTIVE, deadline=loop.time() + 0.05))
        await asyncio.sleep(0.2)
        gate.set()
        await blocker
        with pytest.raises(DeadlineExceeded):
            await late
        await batcher.close()

    run(main())
    assert computed == ["blocker"]


def submit_a_bad_c_together(run_batch):
    """Submits "a", "bad" and "c" at once (one batch of up to 4); each one's result or error."""

    async def main():
        batcher = MicroBatcher(run_batch, ThreadPoolExecutor(1), max_batch_size=4, max_queue_delay=0.1)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in ("a", "bad", "c")), return_exceptions=True)
        await batcher.close()
        return results

    return run(main())


def test_one_bad_item_does_not_fail_its_batch_mates():
    def picky(items):
        if "bad" in items:
            raise ValueError("bad item")
        return [i.upper() for i in items]

    a, bad, c = submit_a_bad_c_together(picky)
    assert (a, c) == ("A", "C")
    assert isinstance(bad, ValueError)


def test_an_error_returned_as_an_items_result_fails_that_item_alone_in_one_run():
    runs: list[list[str]] = []

    def per_item(items):
        runs.append(list(items))
        return [ValueError(f"{i} is bad") if i == "bad" else i.upper() for i in items]

    a, bad, c = submit_a_bad_c_together(per_item)
    assert (a, c) == ("A", "C")
    assert isinstance(bad, ValueError) and str(bad) == "bad is bad"
    assert runs == [["a", "bad", "c"]]  # not run again item by item


def test_interactive_lane_serves_interactive_items_while_bulk_workers_are_busy():
    """With the only bulk worker stuck on a batch, an interactive item still runs, on the lane's executor."""
    release = threading.Event()
    threads: dict[str, str] = {}

    def work(items):
        for item in items:
            threads[item] = threading.current_thread().name
        if "slow-bulk" in items:
            release.wait(10)
        return items

    async def main():
        bulk = ThreadPoolExecutor(1, thread_name_prefix="bulk")
        lane = ThreadPoolExecutor(1, thread_name_prefix="lane")
        batcher = MicroBatcher(work, bulk, max_batch_size=1, max_queue_delay=0, interactive_executor=lane)
        batcher.start()
        stuck = asyncio.ensure_future(batcher.submit("slow-bulk", BULK))
        await asyncio.sleep(0.05)
        queued_bulk = asyncio.ensure_future(batcher.submit("queued-bulk", BULK))
        answer = await asyncio.wait_for(batcher.submit("query", INTERACTIVE), 5)
        assert not stuck.done() and not queued_bulk.done(), "bulk items wait for the bulk worker"
        release.set()
        await asyncio.gather(stuck, queued_bulk)
        await batcher.close()
        return answer

    assert run(main()) == "query"
    assert threads["query"].startswith("lane")
    assert threads["slow-bulk"].startswith("bulk") and threads["queued-bulk"].startswith("bulk")


def test_free_bulk_workers_leave_interactive_items_to_the_lane_unless_it_is_busy():
    release = threading.Event()
    threads: dict[str, str] = {}

    def work(items):
        for item in items:
            threads[item] = threading.current_thread().name
        if "slow-query" in items:
            release.wait(10)
        return items

    async def main():
        bulk = ThreadPoolExecutor(1, thread_name_prefix="bulk")
        lane = ThreadPoolExecutor(1, thread_name_prefix="lane")
        batcher = MicroBatcher(work, bulk, max_batch_size=1, max_queue_delay=0, interactive_executor=lane)
        batcher.start()
        assert await batcher.submit("idle-query", INTERACTIVE) == "idle-query"
        stuck = asyncio.ensure_future(batcher.submit("slow-query", INTERACTIVE))
        await asyncio.sleep(0.05)
        helped = await asyncio.wait_for(batcher.submit("second-query", INTERACTIVE), 5)
        release.set()
        await stuck
        await batcher.close()
        return helped

    assert run(main()) == "second-query"
    assert threads["idle-query"].startswith("lane"), "a free lane takes interactive items, not the bulk worker"
    assert threads["slow-query"].startswith("lane")
    assert threads["second-query"].startswith("bulk"), "with the lane busy, a free bulk worker helps"


def test_a_second_batch_starts_beside_a_running_one_only_once_overlap_at_items_wait():
    """Milvus calls cost about the same at any size: waiting items fill one batch, not several small ones."""
    started: list[list[int]] = []
    release = threading.Event()

    def slow(items):
        started.append(list(items))
        release.wait(10)
        return items

    async def main():
        batcher = MicroBatcher(slow, ThreadPoolExecutor(2), max_batch_size=16, max_queue_delay=0,
                               concurrency=2, overlap_at=4)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.2)
        assert started == [[0]]  # nothing else was running: a lone item starts at once
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.2)
        assert started == [[0]]  # three waiting, fewer than overlap_at: the free worker holds back
        waiting.append(asyncio.ensure_future(batcher.submit(4)))
        await asyncio.sleep(0.2)
        assert started == [[0], [1, 2, 3, 4]]  # the fourth makes a batch worth running beside the first
        release.set()
        results = await asyncio.gather(first, *waiting)
        await batcher.close()
        return results

    assert run(main()) == [0, 1, 2, 3, 4]


def test_held_back_items_start_as_soon_as_the_running_batch_ends():
    release = threading.Event()
    sizes: list[int] = []

    def slow(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            release.wait(10)
        return items

    async def main():
        batcher = MicroBatcher(slow, ThreadPoolExecutor(2), max_batch_size=16, max_queue_delay=0,
                               concurrency=2, overlap_at=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.2)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.2)
        release.set()
        results = await asyncio.wait_for(asyncio.gather(first, *rest), 5)
        await batcher.close()
        return results

    assert run(main()) == [0, 1, 2]
    assert sizes == [1, 2]


def test_without_an_executor_a_coroutine_batch_runs_on_the_event_loop():
    loop_threads: set[int] = set()
    sizes: list[int] = []

    async def picky(items):
        loop_threads.add(threading.get_ident())
        sizes.append(len(items))
        await asyncio.sleep(0.01)  # a Milvus call through an asyncio client
        if "bad" in items:
            raise ValueError("bad item")
        return [i.upper() for i in items]

    async def main():
        batcher = MicroBatcher(picky, None, max_batch_size=4, max_queue_delay=0.1, concurrency=2, overlap_at=2)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in ("a", "bad", "c", "d", "e")),
                                       return_exceptions=True)
        await batcher.close()
        return results

    a, bad, c, d, e = run(main())
    assert (a, c, d, e) == ("A", "C", "D", "E")
    assert isinstance(bad, ValueError)
    assert loop_threads == {threading.get_ident()}
    assert sizes[0] == 4  # batched as with an executor, then the failed batch's items one by one


def test_an_idle_coroutine_batcher_without_delay_runs_an_item_in_the_callers_task():
    """Nothing queued or running: the item runs alone in its caller's task; what arrives meanwhile queues
    behind it and goes in the next batch, and an expired deadline is still refused."""
    tasks: list[asyncio.Task | None] = []
    sizes: list[int] = []
    started = asyncio.Event()

    async def search(items):
        tasks.append(asyncio.current_task())
        sizes.append(len(items))
        started.set()
        await asyncio.sleep(0.05)  # a Milvus call
        return [i * 10 for i in items]

    async def main():
        batcher = MicroBatcher(search, None, max_batch_size=8, max_queue_delay=0.0, concurrency=4, overlap_at=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(1))
        await started.wait()
        later = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
        results = [await first] + [await f for f in later]
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(5, INTERACTIVE, deadline=asyncio.get_running_loop().time() - 1)
        await batcher.close()
        return first, results

    first, results = run(main())
    assert results == [10, 20, 30, 40]
    assert sizes == [1, 3]  # the three that came during the first call went together
    assert tasks[0] is first  # the first ran in its caller's task, the batch of three on a worker
    assert tasks[1] is not first
