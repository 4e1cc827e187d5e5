"""The Search latency objective's control law and the calls bulk work makes (search_slo.py), on a fake clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from lookalike_server import metrics
from lookalike_server.batcher import BULK, INTERACTIVE, MicroBatcher
from lookalike_server.search_slo import (
    MIN_SAMPLES,
    MIN_SHARE,
    UNREACHABLE_AFTER_SECONDS,
    SearchSlo,
    ShareController,
)


def feed(controller: ShareController, latency_s: float, start: float, count: int = MIN_SAMPLES,
         spacing: float = 0.01) -> float:
    """`count` searches of `latency_s` from `start`; returns the time after the last."""
    t = start
    for _ in range(count):
        controller.observe(latency_s, t)
        t += spacing
    return t


def test_slow_searches_lower_the_share_and_quiet_restores_it():
    controller = ShareController(target_s=0.1)
    t = 0.0
    for _ in range(5):
        t = feed(controller, 0.2, t)  # p99 twice the target
        controller.update(t)
    engaged = controller.share
    assert engaged < 0.5
    assert controller.engagements == 1
    # Fast searches (under half the target) bring bulk work back step by step, to full speed.
    steps = 0
    while controller.share < 1.0:
        t = feed(controller, 0.01, t)
        controller.update(t)
        steps += 1
        assert steps < 100
    assert steps > 1  # additive: not all at once
    assert controller.share == 1.0


def test_the_share_never_falls_below_its_floor():
    controller = ShareController(target_s=0.05)
    t = 0.0
    for _ in range(50):
        t = feed(controller, 1.0, t)
        controller.update(t)
    assert controller.share == pytest.approx(MIN_SHARE)


def test_a_target_missed_at_the_floor_is_unreachable_until_searches_recover():
    controller = ShareController(target_s=0.05)
    t = 0.0
    while controller.share > MIN_SHARE:
        t = feed(controller, 1.0, t)
        controller.update(t)
    assert not controller.unreachable(t)  # the floor was only just reached
    floor_reached = t
    while t - floor_reached < UNREACHABLE_AFTER_SECONDS - 1.0:
        t = feed(controller, 1.0, t)
        controller.update(t)
    assert not controller.unreachable(t)  # not yet long enough
    t = feed(controller, 1.0, t, count=200)
    controller.update(t)
    assert controller.unreachable(t)
    # Searches under the target again (still above RELEASE_AT): reachable, though the share has not moved.
    t = feed(controller, 0.045, t + 3.0)
    controller.update(t)
    assert controller.share == pytest.approx(MIN_SHARE)
    assert not controller.unreachable(t + UNREACHABLE_AFTER_SECONDS)


def test_a_target_missed_above_the_floor_is_not_unreachable():
    controller = ShareController(target_s=0.1)
    t = 0.0
    for _ in range(3):  # over the target, but bulk work still has room to yield
        t = feed(controller, 0.2, t, count=MIN_SAMPLES, spacing=0.2)
        controller.update(t)
    assert controller.share > MIN_SHARE
    assert not controller.unreachable(t + 100.0)


def test_the_slo_reports_an_unreachable_target_once_and_its_recovery(caplog):
    slo = SearchSlo(target_ms=50)
    now = time.monotonic()
    with caplog.at_level("INFO", logger="lookalike_server.search_slo"):
        for _ in range(400):
            for _ in range(MIN_SAMPLES):
                slo.controller.observe(1.0, now)
            now += 0.1
            slo.decide(now)
        assert metrics.SEARCH_TARGET_UNREACHABLE._value.get() == 1
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "over the 50 ms target" in warnings[0].getMessage()
        now += 3.0  # the slow searches leave the window
        for _ in range(MIN_SAMPLES):
            slo.controller.observe(0.01, now)
        slo.decide(now)
        assert metrics.SEARCH_TARGET_UNREACHABLE._value.get() == 0
        assert any("back under the 50 ms target" in r.getMessage() for r in caplog.records)


def test_latency_between_release_and_engage_holds_the_share():
    controller = ShareController(target_s=0.1)
    t = feed(controller, 0.2, 0.0)
    controller.update(t)
    held = controller.share
    for _ in range(5):
        t = feed(controller, 0.07, t)  # between RELEASE_AT and ENGAGE_AT x the target
        controller.update(t)
    assert controller.share == held


def test_no_searches_at_all_releases_bulk_work():
    controller = ShareController(target_s=0.1)
    t = feed(controller, 0.5, 0.0)
    controller.update(t)
    assert controller.share < 1.0
    for tick in range(200):  # two windows and more without a search
        controller.update(t + 2.0 + tick * 0.05)
    assert controller.share == 1.0


def test_a_decision_waits_for_searches_made_under_the_new_share():
    controller = ShareController(target_s=0.1)
    t = feed(controller, 0.5, 0.0)
    controller.update(t)
    first = controller.share
    # The same slow samples again: they ran before the change and say nothing about the new share.
    controller.update(t + 0.01)
    assert controller.share == first


def test_event_loop_lag_counts_against_the_target():
    controller = ShareController(target_s=0.1)
    t = feed(controller, 0.01, 0.0)
    controller.update(t, loop_lag_s=0.2)
    assert controller.share < 1.0


def test_event_loop_lag_alone_never_holds_bulk_work_back():
    controller = ShareController(target_s=0.1)
    controller.update(5.0, loop_lag_s=1.0)  # a busy loop with no search to protect
    assert controller.share == 1.0


def test_target_zero_is_off():
    controller = ShareController(target_s=0.0)
    t = feed(controller, 10.0, 0.0)
    controller.update(t, loop_lag_s=10.0)
    assert controller.share == 1.0
    assert controller.recent_p99(t) is None  # nothing is even kept


def test_samples_are_bounded():
    controller = ShareController(target_s=0.1)
    feed(controller, 0.01, 0.0, count=100_000, spacing=0.0)
    assert len(controller._samples) <= 4096


def test_the_slo_exposes_its_share_and_quiet_to_bulk_work():
    async def main() -> None:
        slo = SearchSlo(target_ms=10)
        assert slo.bulk_may_run() and await slo.wait_for_quiet(0.0)
        assert slo.read_window(16) == 16
        for _ in range(MIN_SAMPLES):
            slo.observe(1.0)
        slo.decide(time.monotonic())
        assert slo.share < 1.0
        assert metrics.THROTTLE_SHARE._value.get() == slo.share
        assert not slo.bulk_may_run()
        assert not slo.wait_for_quiet_blocking(0.0)
        assert not await slo.wait_for_quiet(0.0)
        assert 1 <= slo.read_window(16) < 16
        assert slo.read_window(1) == 1  # a stream always moves
        await slo.close()  # a closed objective holds nothing back
        assert slo.bulk_may_run()

    asyncio.run(main())


class _CountingPacer:
    def __init__(self) -> None:
        self.paced: list[float] = []

    async def pace(self, busy_s: float) -> None:
        self.paced.append(busy_s)


async def _double(items: list[int]) -> list[int]:
    return [i * 2 for i in items]


def test_the_batcher_paces_bulk_batches_only():
    async def main() -> None:
        pacer = _CountingPacer()
        batcher: MicroBatcher[int, int] = MicroBatcher(
            _double, None, max_batch_size=4, max_queue_delay=0.001, pacer=pacer, name="paced")
        batcher.start()
        try:
            assert await batcher.submit(1, BULK) == 2
            assert len(pacer.paced) == 1
            assert await batcher.submit(2, INTERACTIVE) == 4
            assert len(pacer.paced) == 1  # an interactive batch never waits for the pacer
        finally:
            await batcher.close()

    asyncio.run(main())


def test_a_throttled_pacer_idles_after_bulk_work_and_wakes_on_release():
    async def main() -> None:
        slo = SearchSlo(target_ms=10)
        for _ in range(MIN_SAMPLES):
            slo.observe(1.0)
        slo.decide(time.monotonic())
        assert slo.share < 1.0
        pace = asyncio.ensure_future(slo.pace(busy_s=100.0))  # would idle for MAX_PAUSE_SECONDS
        await asyncio.sleep(0)
        assert not pace.done()
        slo.controller.share = 1.0  # released
        await asyncio.wait_for(pace, 5.0)
        await slo.close()

    asyncio.run(main())
