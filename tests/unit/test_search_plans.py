"""The one planning call of a search (pipeline/calibration.py: Calibrator.plan), from a calibration or without."""

from __future__ import annotations

import asyncio
import time

from lookalike_server.pipeline.calibration import Calibration, Calibrator, default_effort
from lookalike_server.pipeline.ranking import fetch_size
from lookalike_server.store import CollectionSpec


def _calibrator(spec: CollectionSpec, calibration: Calibration | None) -> Calibrator:
    """A calibrator that holds `calibration` and is not due to check it (no store is called)."""
    calibrator = Calibrator(store=None)  # type: ignore[arg-type]
    key = (spec.name, round(spec.min_recall, 4))
    calibrator._checked[key] = time.monotonic()
    if calibration is not None:
        calibrator._calibrations[key] = calibration
    return calibrator


def _calibration(**changes) -> Calibration:
    fields = {"target": 0.99, "rows": 5000, "efforts": {10: 32, 100: 128}, "recalls": {10: 0.995, 100: 0.992},
              "exact_reference": True, "measured_at": time.time()}
    return Calibration(**{**fields, **changes})


HNSW = CollectionSpec("h", "cosine", "HNSW", "", 8)
IVF_PQ = CollectionSpec("p", "ip", "IVF_PQ", "", 8, {"nlist": 64})


def test_flat_needs_no_plan_and_no_calibration():
    plan = _calibrator(CollectionSpec("f", "ip", "FLAT", "", 8), None).plan(
        CollectionSpec("f", "ip", "FLAT", "", 8), 10, 0.99, filtered=False)
    assert (plan.exact, plan.effort, plan.fetch) == (False, 0, 10)


def test_before_a_calibration_searches_use_the_generous_default():
    plan = _calibrator(HNSW, None).plan(HNSW, 10, 0.99, filtered=False)
    assert not plan.exact and plan.effort == default_effort(HNSW, 10) == 512


def test_a_calibration_gives_the_effort_for_the_nearest_k_at_or_above():
    calibrator = _calibrator(HNSW, _calibration())
    assert calibrator.plan(HNSW, 10, 0.99, filtered=False).effort == 32
    assert calibrator.plan(HNSW, 50, 0.99, filtered=False).effort == 128
    assert calibrator.plan(HNSW, 200, 0.99, filtered=False).effort == 256  # scaled beyond the last k


def test_a_filtered_search_keeps_at_least_the_generous_default():
    assert _calibrator(HNSW, _calibration()).plan(HNSW, 10, 0.99, filtered=True).effort == 512


def test_a_quantized_index_over_fetches_as_calibrated():
    plan = _calibrator(IVF_PQ, _calibration(overfetch={10: 8, 100: 8})).plan(IVF_PQ, 10, 0.99, filtered=False)
    assert plan.overfetch == 8 and plan.fetch == fetch_size(IVF_PQ, 10, 8) == 80


def test_an_index_that_reaches_no_target_plans_an_exact_scan():
    assert _calibrator(HNSW, _calibration(exact_fallback=True)).plan(HNSW, 10, 0.99, filtered=False).exact


def test_another_recall_target_has_its_own_calibration():
    calibrator = _calibrator(HNSW, _calibration())
    calibrator._checked[(HNSW.name, 0.5)] = time.monotonic()
    assert calibrator.plan(HNSW, 10, 0.5, filtered=False).effort == 512


def test_a_due_calibration_waits_while_searches_are_near_their_latency_target():
    """Issue 25: a calibration's scans and searches compete with live searches; it waits for them to calm down."""
    from lookalike_server.search_slo import MIN_SAMPLES, SearchSlo

    class Store:  # answers as for a collection too small to calibrate, and notes that it was asked
        asked: list[str] = []

        async def row_count(self, name: str) -> int:
            self.asked.append(name)
            return 10

    async def main() -> None:
        slo = SearchSlo(target_ms=10)
        for _ in range(MIN_SAMPLES):
            slo.observe(1.0)
        slo.decide(time.monotonic())
        assert not slo.bulk_may_run()
        store = Store()
        calibration = asyncio.ensure_future(Calibrator(store, slo)._calibrate(HNSW, ("h", 0.99)))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert store.asked == [] and not calibration.done()
        await slo.close()  # bulk work may run again
        assert await calibration is None
        assert store.asked and set(store.asked) == {"h"}

    asyncio.run(main())


class _GrowingStore:
    """Answers row counts from a list, one per call (the last repeats)."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    async def row_count(self, name: str) -> int:
        return self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]


def _measured(monkeypatch) -> list[str]:
    """Replaces the measurement itself; returns the list of collections it was asked to measure."""
    from lookalike_server.pipeline import calibration

    measured: list[str] = []

    async def fake_calibrate(store, spec, target, search, cpu=None):
        measured.append(spec.name)
        return

    monkeypatch.setattr(calibration, "calibrate", fake_calibrate)
    return measured


def test_a_calibration_waits_while_the_rows_move_between_checks(monkeypatch):
    """Under a steady ingest every measurement was discarded at its end: none starts until the rows hold still."""
    measured = _measured(monkeypatch)

    async def main() -> None:
        calibrator = Calibrator(_GrowingStore([10_000, 10_500, 11_000, 11_000]))  # type: ignore[arg-type]
        key = ("h", 0.99)
        await calibrator._calibrate(HNSW, key)  # the first look: nothing to compare with, so it measures
        assert measured == ["h"]
        await calibrator._calibrate(HNSW, key)  # 10,000 -> 10,500: an ingest under way
        await calibrator._calibrate(HNSW, key)  # 10,500 -> 11,000: still
        assert measured == ["h"]
        await calibrator._calibrate(HNSW, key)  # 11,000 -> 11,000: settled
        assert measured == ["h", "h"]

    asyncio.run(main())


def test_an_ingest_that_just_ended_calibrates_at_once(monkeypatch):
    measured = _measured(monkeypatch)

    async def main() -> None:
        calibrator = Calibrator(_GrowingStore([10_000, 12_000]))  # type: ignore[arg-type]
        key = ("h", 0.99)
        await calibrator._calibrate(HNSW, key)
        await calibrator._calibrate(HNSW, key, settled=True)  # the rows moved, but their writer is done
        assert measured == ["h", "h"]

    asyncio.run(main())


def test_no_calibration_while_this_servers_ingest_writes(monkeypatch):
    """A throttled ingest moves few rows between checks: the server's own streams say the rows still move."""
    measured = _measured(monkeypatch)
    streams = {"h"}

    async def main() -> None:
        calibrator = Calibrator(_GrowingStore([10_000]))  # type: ignore[arg-type]
        calibrator.writing = lambda name: name in streams
        key = ("h", 0.99)
        await calibrator._calibrate(HNSW, key)
        await calibrator._calibrate(HNSW, key, settled=True)  # one stream ended, another still writes
        assert measured == []
        streams.clear()
        await calibrator._calibrate(HNSW, key, settled=True)
        assert measured == ["h"]

    asyncio.run(main())


def test_a_measurement_is_seen_in_the_metrics_while_it_runs_and_after(monkeypatch):
    """Operators (and bench/load.py, before its idle phase) see a calibration running and how long it took."""
    from prometheus_client import REGISTRY

    from lookalike_server.pipeline import calibration

    def running() -> float:
        return REGISTRY.get_sample_value("lookalike_recall_calibrations_running")

    def measured() -> float:
        return REGISTRY.get_sample_value("lookalike_recall_calibration_seconds_count")

    seen_running: list[float] = []

    async def slow_calibrate(store, spec, target, search, cpu=None):
        seen_running.append(running())
        await asyncio.sleep(0.01)

    monkeypatch.setattr(calibration, "calibrate", slow_calibrate)
    count_before, running_before = measured(), running()

    async def main() -> None:
        await Calibrator(_GrowingStore([10_000]))._calibrate(HNSW, ("h", 0.99))  # type: ignore[arg-type]

    asyncio.run(main())
    assert seen_running == [running_before + 1]
    assert running() == running_before
    assert measured() == count_before + 1
