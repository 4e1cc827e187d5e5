"""The recall calibration widens a quantized index's over-fetch when no effort reaches the target.

The collection is real (Milvus Lite); the index's behaviour is scripted through calibrate()'s `search`
argument: a quantized index whose compressed scores put only part of the true top k among the first
2k candidates, and all of it among the first 8k (as IVF_PQ does on random 1280-d rows).
"""

from __future__ import annotations

import numpy as np

from lookalike_server.config import ServerConfig
from lookalike_server.recall import OVERFETCH_STEPS, calibrate
from lookalike_server.store import CollectionSpec, Store

DIM = 16


def _collection(tmp_path, index_type: str) -> tuple[Store, CollectionSpec, list[str], np.ndarray]:
    store = Store(ServerConfig(data_dir=tmp_path / "data", milvus_embedded="lite"))
    spec = CollectionSpec(name=f"calibrated_{index_type.lower()}", metric="ip", index_type=index_type, model="",
                          dimension=DIM)
    vectors = np.random.default_rng(5).standard_normal((1500, DIM)).astype(np.float32)
    ids = [f"r{i}" for i in range(len(vectors))]
    store.create(spec)
    store.upsert(spec.name, ids, vectors, [{} for _ in ids])
    return store, spec, ids, vectors


def _scripted_index(ids: list[str], vectors: np.ndarray, calls: list[tuple[int, int]], needs: int):
    """Exact top k when over-fetching `needs` per result or more; below that, only every other true hit."""

    def search(queries: np.ndarray, k: int, effort: int, overfetch: int = OVERFETCH_STEPS[0]) -> list[list[str]]:
        calls.append((effort, overfetch))
        ranked = []
        for q in queries:
            order = [ids[i] for i in np.argsort(-(vectors @ q))]
            ranked.append(order[:k] if overfetch >= needs else (order[: 2 * k : 2] if k > 2 else order[:k]))
        return ranked

    return search


def _calibrated(tmp_path, index_type: str, calls: list[tuple[int, int]]):
    """calibrate() on a real collection of `index_type` whose index needs 8 candidates per result."""
    store, spec, ids, vectors = _collection(tmp_path, index_type)
    try:
        return calibrate(store, spec, 0.99, _scripted_index(ids, vectors, calls, needs=8))
    finally:
        store.drop(spec.name)
        store.close()


def test_a_quantized_index_gets_the_over_fetch_that_reaches_the_target(tmp_path):
    calls: list[tuple[int, int]] = []
    calibration = _calibrated(tmp_path, "IVF_SQ8", calls)
    assert calibration is not None
    assert calibration.overfetch == {10: 8, 100: 8}
    assert all(recall >= 0.99 for recall in calibration.recalls.values())
    assert not calibration.exact_fallback
    assert calibration.overfetch_for(10) == 8 and calibration.overfetch_for(5000) == 8
    # The wider list was tried at the highest effort first, then the least effort was looked for.
    assert max(f for _, f in calls) == 8 and 32 not in {f for _, f in calls}
    assert min(e for e, f in calls if f == 8) == calibration.efforts[10]


def test_a_float_index_is_never_over_fetched(tmp_path):
    calls: list[tuple[int, int]] = []
    calibration = _calibrated(tmp_path, "IVF_FLAT", calls)
    assert calibration is not None
    assert {f for _, f in calls} == {OVERFETCH_STEPS[0]}
    assert all(recall < 0.99 for recall in calibration.recalls.values())  # scripted to fall short at 2
    assert calibration.exact_fallback  # 1,500 rows: small enough for exact scans instead


def test_an_index_still_being_built_is_not_measured(tmp_path, monkeypatch):
    """Rows a server has not indexed yet are searched another way: a calibration then would measure that, not
    the index. It is left for the next check instead."""
    store, spec, ids, vectors = _collection(tmp_path, "IVF_SQ8")
    try:
        monkeypatch.setattr(store, "wait_for_index", lambda name, timeout=120.0: False)
        calls: list[tuple[int, int]] = []
        assert calibrate(store, spec, 0.99, _scripted_index(ids, vectors, calls, needs=8)) is None
        assert calls == []
    finally:
        store.drop(spec.name)
        store.close()
