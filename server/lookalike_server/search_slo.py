"""The Search latency objective (--search-p99-target-ms): recent Search latency sets the share of its full pace
that bulk work may take, and bulk work (ingest inference, upserts, reads of Ingest streams, flushes,
calibrations) yields accordingly. Ingest gets every cycle the target leaves.

ShareController is the pure control law (tested alone); SearchSlo runs it on the event loop, measures the
loop's own lag on the way, and offers the calls bulk work makes: pace(), read_window(), wait_for_quiet().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque

from . import metrics

log = logging.getLogger(__name__)

# How often the controller decides, and the event loop's lag is sampled.
TICK_SECONDS = 0.05
# Searches older than this say nothing about the present load.
WINDOW_SECONDS = 2.0
# A decision needs this many searches since the last change, or this long: the p99 of fewer is their maximum,
# and one slow search then cut the share (at 100 searches/s a quarter-second decided on 25 of them).
MIN_SAMPLES = 100
SETTLE_SECONDS = 1.0
# Bulk work yields once the recent p99 passes ENGAGE_AT x target, and speeds up again below RELEASE_AT x target.
ENGAGE_AT = 0.85
RELEASE_AT = 0.6
# Multiplicative decrease, additive increase (as TCP's congestion window): quick to yield, steady to return.
DECREASE = 0.7
INCREASE = 0.05
# Ingest never stops outright: its streams' clients would see no progress at all.
MIN_SHARE = 0.05
# Searches over the target this long with bulk work at its floor: slowing ingest cannot hold the target, and
# the server says so (a warning, lookalike_search_target_unreachable).
UNREACHABLE_AFTER_SECONDS = 10.0
# The longest a bulk unit of work waits before the next one, whatever it cost.
MAX_PAUSE_SECONDS = 1.0
# Samples kept at most (memory stays bounded at any search rate).
MAX_SAMPLES = 4096


class ShareController:
    """Bulk work's share (MIN_SHARE..1) from recent Search latencies against a p99 target (0: always 1)."""

    def __init__(self, target_s: float) -> None:
        self.target_s = target_s
        self.share = 1.0
        self.engagements = 0  # times the share left 1
        self.over_at_floor_since: float | None = None  # searches over the target with the share at its floor
        self._samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)  # (when, seconds)
        self._changed_at = -math.inf

    def observe(self, latency_s: float, now: float) -> None:
        if self.target_s > 0:
            self._samples.append((now, latency_s))

    def recent_p99(self, now: float) -> float | None:
        """p99 of the last window's searches that ran since the share last changed (None: none did)."""
        recent = self._since_change(now)
        if not recent:
            return None
        recent.sort()
        return recent[min(len(recent) - 1, math.ceil(0.99 * len(recent)) - 1)]

    def update(self, now: float, loop_lag_s: float = 0.0) -> float:
        """One decision, on the searches that ran under the current share; `loop_lag_s`, how late the event
        loop runs, is added to their p99 (a search waits that long before the server even starts timing it)."""
        if self.target_s <= 0:
            return self.share
        recent = self._since_change(now)
        if recent:
            settled = len(recent) >= MIN_SAMPLES or now - self._changed_at >= SETTLE_SECONDS
            if not settled:
                return self.share
            signal = self.recent_p99(now) or 0.0
            signal += loop_lag_s
        elif self._samples:
            return self.share  # searches ran lately, none since the last change: wait for evidence
        else:
            signal = 0.0  # no search in the last window: nothing to protect
        previous = self.share
        if previous > MIN_SHARE or signal <= self.target_s:
            self.over_at_floor_since = None
        elif self.over_at_floor_since is None:
            self.over_at_floor_since = now
        if signal > ENGAGE_AT * self.target_s:
            self.share = max(MIN_SHARE, self.share * DECREASE)
        elif signal < RELEASE_AT * self.target_s:
            self.share = min(1.0, self.share + INCREASE)
        if self.share != previous:
            if previous == 1.0:
                self.engagements += 1
            self._changed_at = now
        return self.share

    def unreachable(self, now: float) -> bool:
        """Whether searches have missed the target for UNREACHABLE_AFTER_SECONDS with bulk work at its floor."""
        since = self.over_at_floor_since
        return since is not None and now - since >= UNREACHABLE_AFTER_SECONDS

    def _since_change(self, now: float) -> list[float]:
        while self._samples and self._samples[0][0] < now - WINDOW_SECONDS:
            self._samples.popleft()
        since = self._changed_at
        return [s for t, s in self._samples if t >= since]


class SearchSlo:
    """The objective on the running server: told every Search's latency, consulted by bulk work."""

    def __init__(self, target_ms: float) -> None:
        self.controller = ShareController(target_ms / 1000.0)
        self._task: asyncio.Task[None] | None = None
        self._quiet = threading.Event()  # share at 1: for threads (calibration) and the event loop alike
        self._quiet.set()
        self._lags: deque[float] = deque(maxlen=max(1, round(SETTLE_SECONDS / TICK_SECONDS)))
        self._said_unreachable = False  # what operators were last told
        metrics.THROTTLE_SHARE.set(1.0)
        metrics.SEARCH_TARGET_UNREACHABLE.set(0)

    @property
    def enabled(self) -> bool:
        return self.controller.target_s > 0

    @property
    def share(self) -> float:
        return self.controller.share

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="search-slo")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._quiet.set()  # nothing waits for a quiet that the stopped controller would never announce

    def observe(self, latency_s: float) -> None:
        """A finished Search's latency, in seconds (on the event loop)."""
        self.controller.observe(latency_s, time.monotonic())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + TICK_SECONDS
            await asyncio.sleep(TICK_SECONDS)
            lag = max(0.0, loop.time() - expected)
            metrics.EVENT_LOOP_LAG_SECONDS.observe(lag)
            self._lags.append(lag)
            self.decide(time.monotonic(), max(self._lags))

    def decide(self, now: float, loop_lag_s: float = 0.0) -> float:
        """One controller step (the tick task's; tests call it directly)."""
        engagements = self.controller.engagements
        share = self.controller.update(now, loop_lag_s)
        metrics.THROTTLE_SHARE.set(share)
        if self.controller.engagements > engagements:
            metrics.THROTTLE_ENGAGEMENTS.inc()
        p99 = self.controller.recent_p99(now)
        metrics.SEARCH_P99_RECENT.set(p99 or 0.0)
        self._report_reachability(self.controller.unreachable(now), p99)
        if share >= 1.0:
            self._quiet.set()
        else:
            self._quiet.clear()
        return share

    def _report_reachability(self, unreachable: bool, p99: float | None) -> None:
        """Tells operators once when the target cannot be held by slowing ingest, and once when it is again."""
        if unreachable == self._said_unreachable:
            return
        self._said_unreachable = unreachable
        metrics.SEARCH_TARGET_UNREACHABLE.set(1 if unreachable else 0)
        target_ms = self.controller.target_s * 1000
        if unreachable:
            log.warning(
                "Search p99 %.0f ms has been over the %.0f ms target for %.0f s with ingest slowed to %.0f%% of its "
                "pace: slowing ingest further cannot hold it. Searches alone need more of this machine (more "
                "replicas, cores or a faster Milvus), or a higher --search-p99-target-ms",
                (p99 or 0.0) * 1000, target_ms, UNREACHABLE_AFTER_SECONDS, MIN_SHARE * 100)
        else:
            log.info("Search latency is back under the %.0f ms target", target_ms)

    # What bulk work calls

    def bulk_may_run(self) -> bool:
        """Whether optional bulk work (a recall calibration, a flush) may start now: searches are quiet."""
        return self._quiet.is_set()

    async def wait_for_quiet(self, timeout_s: float) -> bool:
        """Waits until searches are quiet, at most `timeout_s`; whether they are."""
        deadline = time.monotonic() + timeout_s
        while not self._quiet.is_set() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(TICK_SECONDS, left))
        return self._quiet.is_set()

    def wait_for_quiet_blocking(self, timeout_s: float) -> bool:
        """wait_for_quiet for a thread (the recall calibration's)."""
        return self._quiet.wait(timeout_s)

    async def pace(self, busy_s: float) -> None:
        """After a bulk unit of work that took `busy_s`: idles long enough that bulk work takes its share of
        the time (busy x (1/share - 1)), ending early once the share rises again."""
        waited = 0.0
        while (share := self.controller.share) < 1.0:
            pause = min(MAX_PAUSE_SECONDS, busy_s * (1.0 / share - 1.0))
            if waited >= pause:
                return
            step = min(TICK_SECONDS, pause - waited)
            await asyncio.sleep(step)
            waited += step

    def read_window(self, full: int) -> int:
        """Items an Ingest stream may have in flight now (full speed: `full`); the rest stay unread, so that
        HTTP/2 flow control holds the client back."""
        return full if self.controller.share >= 1.0 else max(1, math.ceil(full * self.controller.share))
