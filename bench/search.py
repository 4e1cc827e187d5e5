"""Search at scale: recall against brute force for every index type and k, latency, QPS through lookalike vs
pymilvus calling the same Milvus, the native kernels, and a scaling curve over the three Milvus stores.

Everything runs here on loopback, started and stopped by this script:

  recall/latency   `lookalike serve --data-dir` (Milvus Lite in-process). Per data set (random unit vectors;
                   clustered "realistic" vectors around EfficientNet-Lite0 embeddings of augmented scikit-image
                   photos) and per index type (FLAT, HNSW, IVF_FLAT, IVF_SQ8): ingest N rows through gRPC, wait
                   for the server's recall calibration (which itself waits for Milvus to finish the index), then
                   one thread searches held-out queries one at a time for every k (ks interleaved per query):
                   recall@10 and recall@k against exact numpy brute force, p50/p99 latency. The index types only
                   a Milvus server builds (IVF_PQ, SCANN) are measured the same way on the standalone
                   (block standalone-indexes, recall_latency_standalone_server_indexes).
  qps              32 client threads, one query per call, by vector, k=10, the clustered HNSW collection:
                   through lookalike vs pymilvus MilvusClient straight to the same Milvus (Milvus Lite: a copy
                   of the server's collection folder opened in this process; standalone: the same server), at
                   min_recall 0.99 (default) and 0.9, the direct client using the ef the server calibrated.
                   Phases interleaved round by round, since the machine is shared.
  native_vs_numpy  bench/native.py run as a subprocess, its JSON embedded.
  scaling          per store (Milvus Lite in-process, `milvus-lite server` child, Milvus standalone) and size:
                   ingest rate, single-query latency, 32 queries per call (search_many) QPS, 32-client QPS.

Run (about 40 minutes with the defaults on 2 shared cores: native 0.5, lite 29, lite-server 2, standalone 7; the
standalone parts need .venv-milvus, made by `make test` or `make milvus-standalone`):
    .venv/bin/python bench/search.py [--rows 50000] [--scaling 10000x1280,100000x1280] [--write]
    .venv/bin/python bench/search.py --blocks standalone --merge earlier.json --write   # redo one part
A scaling point of another dimension (e.g. 1000000x256) serves vectors through a copy of the model card
declaring that dimension. --write also saves bench/results/search.json. Add scaling points alone, each capped:
    .venv/bin/python bench/search.py --blocks lite,lite-server,standalone --scaling-only --scaling 1000000x256 \
        --scaling-cap 1500 --merge bench/results/search.json --write
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from common import (  # noqa: E402
    CpuMeter,
    free_port,
    installed_server,
    log,
    machine_info,
    make_photos,
    percentiles,
    time_limit,
    wait_serving,
)

from lookalike import Client, LookalikeClientError  # noqa: E402
from lookalike_server import milvus_standalone  # noqa: E402
from lookalike_server.milvus_lite_server import MilvusLiteServer  # noqa: E402
from tests.conftest import ServerProcess  # noqa: E402

RESULTS = REPO / "bench" / "results"
MODEL_DIM = 1280
MODEL_CARD = REPO / "models" / "efficientnet-lite0" / "card.toml"
STANDALONE_VENV = REPO / ".venv-milvus"
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8")
QPS_K = 10
RECALL_TARGET = 0.99
LOW_TARGET = 0.9
SUBSPACE_DIM = 16  # clustered data: each cluster spreads along its own 16-d subspace, like real embeddings
MIN_AVAILABLE_GIB = 2.0  # a capped scaling point stops the phase that leaves less memory available (no swap here)


# Data


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


@dataclass
class Clusters:
    """Cluster centres (unit rows) and a random subspace per cluster; rows = centre + subspace noise + a little
    isotropic noise, normalised: near-duplicates of each centre along a few directions, as augmented photos are."""

    centres: np.ndarray
    bases: np.ndarray  # (clusters, dim, SUBSPACE_DIM)
    source: str
    spread: float = 0.5  # norm of the subspace offset, relative to the unit centre
    jitter: float = 0.15  # norm of the isotropic noise

    @classmethod
    def make(cls, centres: np.ndarray, source: str, seed: int) -> Clusters:
        rng = np.random.default_rng(seed)
        dim = centres.shape[1]
        bases = rng.standard_normal((len(centres), dim, SUBSPACE_DIM), dtype=np.float32) / np.sqrt(dim)
        return cls(centres.astype(np.float32), bases, source)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        count, dim = self.centres.shape
        # Uneven cluster sizes (some photos have many near-duplicates, most have few).
        weights = 1.0 / (np.arange(count) + 10.0)
        labels = rng.choice(count, size=n, p=weights / weights.sum())
        out = np.empty((n, dim), dtype=np.float32)
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            z = rng.standard_normal((len(rows), SUBSPACE_DIM), dtype=np.float32) * (self.spread / np.sqrt(SUBSPACE_DIM))
            noise = rng.standard_normal((len(rows), dim), dtype=np.float32) * (self.jitter / np.sqrt(dim))
            out[rows] = self.centres[c] + z @ self.bases[c].T + noise
        for start in range(0, n, 65_536):  # in slices: a million 1280-d rows are 5 GB, their squares 5 more
            out[start : start + 65_536] /= np.linalg.norm(out[start : start + 65_536], axis=1, keepdims=True)
        return out


def photo_centres(address: str, folder: Path, count: int) -> np.ndarray:
    """EfficientNet-Lite0 embeddings (through the server's Embed) of `count` augmented scikit-image photos."""
    paths = make_photos(folder, count, seed=7)
    with Client(address, timeout=300) as client:
        vectors = np.concatenate([client.embed([str(p) for p in paths[i : i + 32]]) for i in range(0, count, 32)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each query's exact top k by inner product (unit rows: cosine), best first."""
    scores = queries @ data.T
    k = min(k, data.shape[0])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def row_id(i: int) -> str:
    return f"v{i}"


# Servers


# The running servers by address: waits read their logs.
SERVERS: dict[str, ServerProcess] = {}


@contextlib.contextmanager
def lookalike_serve(workdir: Path, *args: str) -> Iterator[tuple[ServerProcess, int]]:
    """`lookalike serve` with a metrics port, ready on return; stopped (SIGTERM) afterwards whatever happened."""
    metrics_port = free_port()
    server = ServerProcess(workdir, *args, "--metrics-port", str(metrics_port))
    SERVERS[server.address] = server
    try:
        wait_serving(server)
        yield server, metrics_port
    finally:
        SERVERS.pop(server.address, None)
        server.stop()


def model_card(dim: int, folder: Path) -> Path:
    """The shipped card, or a copy declaring `dim` (vectors only: the network's output is never used)."""
    if dim == MODEL_DIM:
        return MODEL_CARD
    text = MODEL_CARD.read_text()
    text = re.sub(r"^dimension = \d+", f"dimension = {dim}", text, flags=re.M)
    text = re.sub(r'^name = "([^"]+)"', rf'name = "\1-bench-{dim}d"', text, count=1, flags=re.M)
    text = re.sub(r'^file = "([^"]+)"', lambda m: f'file = "{(MODEL_CARD.parent / m.group(1)).resolve()}"', text,
                  flags=re.M)
    path = folder / f"card-{dim}d.toml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


LOG_FINDING = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|exception", re.I)


def log_findings(server: ServerProcess) -> dict[str, Any]:
    """Warnings, errors and calibration lines from a server's log."""
    lines = server.log().splitlines()
    bad = [line for line in lines if LOG_FINDING.search(line)]
    return {
        "warning_or_error_lines": len(bad),
        "samples": bad[:12],
        "calibrated_lines": [line[-260:] for line in lines if "calibrated " in line][:40],
    }


def scrape(metrics_port: int) -> dict[str, float]:
    """Sum and count of the server's Search call time, of its Milvus search time and of its exact re-rank."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        for key, pattern in (("request", r'^lookalike_request_seconds_(sum|count)\{method="[^"]*Search"\}'),
                             ("milvus", r'^lookalike_milvus_seconds_(sum|count)\{operation="search"\}'),
                             ("rerank", r'^lookalike_rerank_seconds_(sum|count)(\{\})? ')):
            m = re.match(pattern, line)
            if m:
                out[f"{key}_{m.group(1)}"] = out.get(f"{key}_{m.group(1)}", 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def server_split(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Mean server-side Search time vs its Milvus part over a phase; the rest (gRPC, parsing, re-rank) above."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    if not d.get("request_count") or not d.get("milvus_count"):
        return {}
    request_ms = 1e3 * d["request_sum"] / d["request_count"]
    milvus_ms = 1e3 * d["milvus_sum"] / d["milvus_count"]
    return {"server_search_ms_mean": round(request_ms, 2), "milvus_search_call_ms_mean": round(milvus_ms, 2),
            "milvus_calls_per_search": round(d["milvus_count"] / d["request_count"], 3),
            "share_outside_milvus": round(max(0.0, 1 - d["milvus_sum"] / d["request_sum"]), 3),
            # Re-ranks run only where Milvus' own scores are approximate (IVF_SQ8) or fall back to exact scans.
            "rerank_ms_mean_per_search": round(1e3 * d.get("rerank_sum", 0.0) / d["request_count"], 3),
            "rerank_share_of_server_search": round(d.get("rerank_sum", 0.0) / d["request_sum"], 4),
            "reranked_searches": int(d.get("rerank_count", 0)),
            "meaning": "server-side time per Search (interceptor) vs its Milvus search calls; the share outside "
                       "Milvus (gRPC decoding, validation, batching, exact re-rank, encoding) bounds the re-rank"}


# Caps


def available_gib() -> float:
    return psutil.virtual_memory().available / 2**30


class CapReached(Exception):
    """A capped scaling point ran out of time (or memory) in a phase it cannot do without."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(f"{record['phase']}: {record['reason']} after {record['after_s']} s")
        self.record = record


class Cap:
    """One scaling point's limit: `seconds` from its start (0: none) and a floor of available memory. Phases
    check it; cut() notes a phase it ended (which, why, after how long, how many rows were in)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.lowest_available_gib = round(available_gib(), 1)
        self.cuts: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed() if self.seconds else float("inf")

    def exceeded(self) -> str:
        """'' while within the cap, else 'time' or 'memory'."""
        gib = available_gib()
        self.lowest_available_gib = min(self.lowest_available_gib, round(gib, 1))
        if self.left() <= 0:
            return "time"
        return "memory" if gib < MIN_AVAILABLE_GIB else ""

    def cut(self, phase: str, reason: str, **details: Any) -> dict[str, Any]:
        why = (f"past the cap of {self.seconds:.0f} s" if reason == "time" else
               f"less than {MIN_AVAILABLE_GIB} GiB of memory available" if reason == "memory" else reason)
        record = {"phase": phase, "reason": why, "after_s": round(self.elapsed(), 1), **details}
        self.cuts.append(record)
        log(f"  cap: {record}")
        return record

    def summary(self) -> dict[str, Any]:
        return {"cap_s": self.seconds or None, "seconds": round(self.elapsed(), 1),
                "lowest_memory_available_gib": self.lowest_available_gib, "phases_cut": self.cuts,
                "finished_within_cap": not self.cuts}


# Collections


def ingest(address: str, collection: str, vectors: np.ndarray, streams: int = 4,
           cap: Cap | None = None) -> dict[str, Any]:
    """Stores every vector (ids v0, v1, ...) over `streams` Ingest streams; fails loudly on any error. With a
    cap, the streams stop sending once it is reached: `stopped` says why and `rows_in` how many were stored."""
    parts = np.array_split(np.arange(len(vectors)), streams)
    failures: Counter[str] = Counter()
    samples: list[str] = []
    stored = [0] * streams
    stopped: list[str] = []
    lock = threading.Lock()

    def items(i: int) -> Iterator[tuple[str, np.ndarray]]:
        for n, j in enumerate(parts[i]):
            if cap is not None and n % 1000 == 0 and (why := stopped[0] if stopped else cap.exceeded()):
                stopped.append(why)
                return
            yield row_id(j), vectors[j]

    def body(i: int) -> None:
        try:
            with Client(address, timeout=max(1800.0, cap.seconds if cap else 0.0)) as client:
                for result in client.ingest(items(i), collection=collection):
                    if result.ok:
                        stored[i] += 1
                        continue
                    with lock:
                        failures[result.code] += 1
                        samples.append(result.message)
        except LookalikeClientError as e:
            with lock:
                failures[f"stream:{e.code}"] += 1
                samples.append(e.details)

    started = time.monotonic()
    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    if failures:
        raise RuntimeError(f"ingest into {collection} failed: {dict(failures)} {samples[:3]}")
    out = {"rows": len(vectors), "seconds": round(seconds, 1), "rows_per_s": round(sum(stored) / seconds, 1)}
    if stopped:
        out.update(rows_in=sum(stored), stopped=stopped[0])
    return out


def calibrations(address: str, collection: str) -> list[dict[str, Any]]:
    """Every calibration the server reports for a collection, whatever its target (the client keeps one)."""
    import grpc

    from lookalike.v1 import lookalike_pb2 as pb
    from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        info = pb_grpc.CollectionsStub(channel).DescribeCollection(pb.DescribeCollectionRequest(name=collection),
                                                                    timeout=60)
    return [{"k": c.k, "effort": c.effort, "recall": round(c.recall, 4), "target": round(c.target, 4),
             "rows": c.rows, "exact_reference": c.exact_reference, "exact_fallback": c.exact_fallback,
             **({"overfetch": c.overfetch} if c.overfetch else {})}
            for c in info.calibrations]


def calibration_failure(log_text: str, collection: str) -> tuple[int, str]:
    """How often the server logged that calibrating `collection` failed, and the last error's message (its
    exception line, plus a gRPC error's details line)."""
    marker = f"calibrating {collection} failed"
    count = log_text.count(marker)
    if not count:
        return 0, ""
    lines = []
    for line in log_text[log_text.rindex(marker):].splitlines()[1:]:
        if re.match(r"^\d{4}-\d\d-\d\d ", line):
            break
        lines.append(line.strip())
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    details = [line for line in lines if line.startswith("details = ")]
    return count, " ".join(errors[-1:] + details[-1:]) or (lines[-1] if lines else "")


def wait_calibrated(address: str, collection: str, target: float, probe: np.ndarray,
                    timeout_s: float) -> dict[str, Any]:
    """Starts the server's calibration for `target` with one search, then polls DescribeCollection until it
    reports a calibration for that target (the server waits for Milvus' index before measuring). Gives up
    early when the server logs that the calibration failed (it keeps its default effort then)."""
    started = time.monotonic()
    server = SERVERS.get(address)
    failures_before = calibration_failure(server.log(), collection)[0] if server else 0
    with Client(address, timeout=600) as client:
        client.search(probe, k=QPS_K, collection=collection, min_recall=target)
        polls = 0
        while time.monotonic() - started < timeout_s:
            polls += 1
            found = [c for c in calibrations(address, collection) if abs(c["target"] - target) < 1e-3]
            if found:
                return {"target": target, "waited_s": round(time.monotonic() - started, 1), "polls": polls,
                        "calibrations": found}
            if server is not None:
                failures, error = calibration_failure(server.log(), collection)
                if failures > failures_before:
                    return {"target": target, "waited_s": round(time.monotonic() - started, 1), "polls": polls,
                            "failed": True, "server_error": error, "calibrations": [],
                            "consequence": "the server searches with its uncalibrated default effort"}
            time.sleep(2.0)
            if polls % 15 == 0:  # the server re-checks every 30 s: a search starts it again if it gave up
                client.search(probe, k=QPS_K, collection=collection, min_recall=target)
    return {"target": target, "waited_s": round(time.monotonic() - started, 1), "timed_out": True,
            "calibrations": []}


def default_ef(k: int) -> int:
    """HNSW ef the server uses before (or without) a calibration: recall.default_effort of pipeline._fetch(k)."""
    return max(512, 4 * max(2 * k, k + 32))


def effort_for(calibration: dict[str, Any], k: int, default: int) -> int:
    """The ef the server uses for k (recall.Calibration.effort_for), from DescribeCollection's figures."""
    efforts = {c["k"]: c["effort"] for c in calibration.get("calibrations", [])}
    for ck in sorted(efforts):
        if k <= ck:
            return efforts[ck]
    return int(efforts[max(efforts)] * k / max(efforts)) if efforts else default


def lite_index_built(db: Path, collection: str) -> bool:
    """Milvus Lite's describe_index always says Finished: its index files beside each data segment are the truth."""
    partitions = db / "collections" / collection / "partitions"
    segments = {p.stem for p in partitions.glob("*/data/*.parquet")}
    indexed = {p.name.split(".")[0] for p in partitions.glob("*/indexes/*.idx")}
    return bool(segments) and segments <= indexed


def wait_index(name: str, db: Path | None, uri: str, cap: Cap, reserve_s: float) -> dict[str, Any]:
    """Waits until Milvus has indexed every row (Milvus Lite: an index file beside every flushed data segment; a
    server, flushed first: indexed_rows reaches total_rows; its pending_index_rows is not waited for, as the
    compactions that follow a million-row ingest keep re-indexing merged segments while the indexed ones serve),
    leaving reserve_s of the cap for the queries; a wait that runs out is cut."""
    started, why = time.monotonic(), ""
    if db is None:
        from pymilvus import MilvusClient

        client = MilvusClient(uri)
        try:
            client.flush(name)
        finally:
            client.close()
    while True:
        state: Any = lite_index_built(db, name) if db is not None else server_index_state(uri, name)
        built = state if db is not None else 0 < int(state.get("total_rows", 0)) <= int(state["indexed_rows"])
        if built or cap.left() <= reserve_s or (why := cap.exceeded()) == "memory":
            break
        time.sleep(5.0)
    out = {"waited_s": round(time.monotonic() - started, 1), "built": built, "state": state}
    log(f"  index wait: {out}")
    if not built:
        cap.cut("index_build", "memory" if why == "memory" else "time", waited_s=out["waited_s"], state=state,
                consequence="calibrated and measured while Milvus was still indexing")
    return out


def server_index_state(uri: str, collection: str) -> dict[str, Any]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    try:
        info = client.describe_index(collection, "vector")
    finally:
        client.close()
    return {k: v for k, v in info.items() if k in ("index_type", "params", "total_rows", "indexed_rows",
                                                   "pending_index_rows", "state")}


# Measurements


def recall_latency(address: str, collection: str, queries: np.ndarray, truth: np.ndarray, ks: Sequence[int],
                   budget_s: float, metrics_port: int | None = None) -> dict[str, Any]:
    """One thread, one query per call; each query searched at every k (the order rotating per query).

    Stops after budget_s (once 3 queries are done): a slow path (an exact-scan fallback, unflushed rows) must
    not eat the whole run; queries_measured says how many were.
    """
    per_k: dict[int, dict[str, list[float]]] = {k: {"lat": [], "r10": [], "rk": [], "short": []} for k in ks}
    before = scrape(metrics_port) if metrics_port else {}
    started_all = time.monotonic()
    measured = 0
    with Client(address, timeout=300) as client:
        client.search(queries[0], k=ks[0], collection=collection)  # connect
        for qi, q in enumerate(queries):
            if qi >= 3 and time.monotonic() - started_all > budget_s:
                break
            measured += 1
            for k in ks[qi % len(ks):] + ks[: qi % len(ks)]:
                started = time.perf_counter()
                hits = client.search(q, k=k, collection=collection)
                per_k[k]["lat"].append(time.perf_counter() - started)
                got = [h.id for h in hits]
                want = [row_id(r) for r in truth[qi, :k]]
                per_k[k]["r10"].append(len(set(got[:10]) & set(want[:10])) / min(10, len(want)))
                per_k[k]["rk"].append(len(set(got) & set(want)) / len(want))
                per_k[k]["short"].append(float(len(got) < len(want)))
    after = scrape(metrics_port) if metrics_port else {}
    out: dict[str, Any] = {"queries_measured": measured, "seconds": round(time.monotonic() - started_all, 1)}
    for k, m in per_k.items():
        lat = percentiles(m["lat"])
        out[str(k)] = {
            "recall_at_10": round(float(np.mean(m["r10"])), 4),
            "recall_at_k": round(float(np.mean(m["rk"])), 4),
            "queries_with_recall_at_10_below_0.9": int(np.sum(np.array(m["r10"]) < 0.9)),
            "short_results": int(sum(m["short"])),
            "p50_ms": lat["p50"], "p99_ms": lat["p99"], "mean_ms": lat["mean"],
        }
    if before and after:
        out["server_time_split_all_ks"] = server_split(before, after)
    return out


SearchFn = Callable[[int], Any]


def measure_qps(make_search: Callable[[], tuple[SearchFn, Callable[[], None]]], n_queries: int, clients: int,
                warmup_s: float, duration_s: float) -> dict[str, Any]:
    """Calls per second from `clients` threads, one query per call; make_search() gives (search(i), close())."""
    start_at = time.monotonic() + 2.0
    count_from = start_at + warmup_s
    end_at = count_from + duration_s
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def body(i: int) -> None:
        rng = random.Random(i)
        search, close = make_search()
        try:
            search(0)
            while time.monotonic() < start_at:
                time.sleep(0.005)
            while (now := time.monotonic()) < end_at:
                try:
                    search(rng.randrange(n_queries))
                except Exception as e:  # lookalike and pymilvus raise their own types
                    with lock:
                        errors[getattr(e, "code", type(e).__name__)] += 1
                    continue
                done = time.monotonic()
                if now >= count_from and done <= end_at:
                    latencies[i].append(done - now)
        finally:
            close()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end_at - time.monotonic() + 120))
    flat = [x for per in latencies for x in per]
    return {"qps": round(len(flat) / duration_s, 1), "latency_ms": percentiles(flat), "errors": dict(errors),
            "threads_still_running": sum(t.is_alive() for t in threads)}


def grpc_search(address: str, collection: str, queries: np.ndarray, k: int,
                min_recall: float = 0.0) -> Callable[[], tuple[SearchFn, Callable[[], None]]]:
    def make() -> tuple[SearchFn, Callable[[], None]]:
        client = Client(address, timeout=120)
        return (lambda i: client.search(queries[i], k=k, collection=collection, min_recall=min_recall)), client.close
    return make


def direct_search(client_for: Callable[[], Any], close: Callable[[Any], None], collection: str,
                  queries: list[list[float]], k: int, ef: int,
                  level: dict[str, str]) -> Callable[[], tuple[SearchFn, Callable[[], None]]]:
    """pymilvus MilvusClient.search as a plain user calls it: k results, ids only, the given ef."""
    def make() -> tuple[SearchFn, Callable[[], None]]:
        client = client_for()

        def search(i: int) -> Any:
            return client.search(collection, data=[queries[i]], limit=k, output_fields=["id"],
                                 search_params={"params": {"ef": max(ef, k)}}, **level)
        return search, lambda: close(client)
    return make


def direct_recall(search: SearchFn, truth: np.ndarray, n: int) -> float:
    """recall@10 of the direct client's answers to the first n queries (it has no over-fetch or re-rank)."""
    recalls = []
    for i in range(min(n, len(truth))):
        got = [hit["id"] for hit in search(i)[0]]
        recalls.append(len(set(got[:10]) & {row_id(r) for r in truth[i, :10]}) / 10)
    return round(float(np.mean(recalls)), 4)


def interleaved_qps(phases: dict[str, Callable[[], dict[str, Any]]], rounds: int,
                    watched_pid: int | None) -> dict[str, Any]:
    """Runs every phase once per round in the same order; the reported QPS is the mean over rounds."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in phases}
    for r in range(rounds):
        for name, phase in phases.items():
            with CpuMeter(watched_pid) as cpu:
                figures = phase()
            figures["cpu"] = cpu.result
            runs[name].append(figures)
            log(f"  round {r + 1} {name}: {figures['qps']} qps, p50 {figures['latency_ms']['p50']} ms, "
                f"errors {figures['errors']}")
            time.sleep(1.0)
    return {name: {"qps": round(float(np.mean([x["qps"] for x in got])), 1), "rounds": got}
            for name, got in runs.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


# Phases


@dataclass
class DataSet:
    name: str
    rows: np.ndarray
    queries: np.ndarray
    truth: np.ndarray  # exact top max(k) row numbers per query
    description: str


def dataset_description(name: str, args: argparse.Namespace, source: str) -> str:
    if name == "random":
        return f"{args.rows} random unit {MODEL_DIM}-d vectors (normal, normalised); held-out queries alike"
    return (f"{args.rows} {MODEL_DIM}-d vectors around {args.clusters} centres ({source}); each row = centre + an "
            f"offset of norm ~{Clusters.spread} in the cluster's own random {SUBSPACE_DIM}-d subspace + isotropic "
            f"noise of norm ~{Clusters.jitter}, normalised; cluster sizes ~1/(c+10); queries drawn the same way "
            "(held out, not stored rows)")


def make_datasets(args: argparse.Namespace, clusters: Clusters) -> list[DataSet]:
    top = max(args.ks)
    out = []
    for name in args.datasets:
        if name == "random":
            rows, queries = random_unit(args.rows, MODEL_DIM, 1), random_unit(args.queries, MODEL_DIM, 2)
        else:
            rows, queries = clusters.sample(args.rows, 1), clusters.sample(args.queries, 2)
        description = dataset_description(name, args, clusters.source)
        started = time.monotonic()
        truth = exact_top(rows, queries, top)
        log(f"data set {name}: {rows.shape}, brute force top {top} in {time.monotonic() - started:.1f} s")
        out.append(DataSet(name, rows, queries, truth, description))
    return out


def lossy(index_type: str) -> bool:
    return index_type != "FLAT"


def prepare_collection(address: str, name: str, index_type: str, data: np.ndarray, probe: np.ndarray,
                       args: argparse.Namespace, cap: Cap | None = None,
                       index_wait: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Creates, fills and calibrates a collection. With a cap: an ingest it stops raises CapReached; index_wait
    (if any) runs before the calibration; the calibration wait ends in time to leave --scaling-reserve seconds
    for the queries (uncalibrated then)."""
    with Client(address, timeout=120) as client:
        with contextlib.suppress(LookalikeClientError):
            client.drop_collection(name)
        client.create_collection(name, "cosine", index_type, min_recall=RECALL_TARGET)
    log(f"  ingesting {len(data)} rows into {name}")
    out: dict[str, Any] = {"ingest": ingest(address, name, data, cap=cap)}
    log(f"  ingested: {out['ingest']}")
    if cap is not None and "stopped" in out["ingest"]:
        with Client(address, timeout=120) as client:
            row_count = client.describe_collection(name).row_count
        raise CapReached(cap.cut("ingest", out["ingest"]["stopped"], rows_in=out["ingest"]["rows_in"],
                                 rows_wanted=len(data), server_row_count=row_count,
                                 ingest_s=out["ingest"]["seconds"], rows_per_s=out["ingest"]["rows_per_s"]))
    if index_wait is not None:
        out["index_wait"] = index_wait()
    if lossy(index_type):
        wait_s = args.calibration_timeout
        if cap is not None:
            wait_s = max(0.0, min(wait_s, cap.left() - args.scaling_reserve))
        out["calibration_wait"] = wait_calibrated(address, name, RECALL_TARGET, probe, wait_s)
        log(f"  calibrated after {out['calibration_wait']['waited_s']} s: {out['calibration_wait']['calibrations']}")
    with Client(address, timeout=120) as client:
        info = client.describe_collection(name)
    out["server_describe"] = {"row_count": info.row_count, "index_params_milvus_reports": info.index_params,
                              "min_recall": round(info.min_recall, 4)}
    return out


def ensure_clusters(args: argparse.Namespace, address: str, workdir: Path, holder: list[Clusters]) -> Clusters:
    """The clustered data's centres, made once per run through whichever server is up first (deterministic:
    the same photos and model give the same centres in every run)."""
    if not holder:
        if args.centres == "photos":
            started = time.monotonic()
            centres = photo_centres(address, workdir / "photos", args.clusters)
            source = (f"EfficientNet-Lite0 embeddings (through Embed) of {args.clusters} augmented 640x480 "
                      f"scikit-image photos, bench/common.make_photos; made in {time.monotonic() - started:.0f} s")
        else:
            centres, source = random_unit(args.clusters, MODEL_DIM, 3), "random unit vectors"
        source += f"; centres fingerprint (sum of all values) {float(centres.astype(np.float64).sum()):.6f}"
        holder.append(Clusters.make(centres, source, seed=4))
    return holder[0]


def lite_block(args: argparse.Namespace, workdir: Path, result: dict[str, Any],
               clusters_holder: list[Clusters]) -> None:
    """Milvus Lite in-process: the recall/latency matrix, the Lite QPS comparison, and its scaling points
    (--scaling-only: those alone)."""
    data_dir = workdir / "lite-data"
    db = data_dir / "milvus.db"
    lite = ("--milvus-embedded", "lite")
    with lookalike_serve(workdir / "serve-lite", *lite, "--data-dir", str(data_dir)) as (server, metrics_port):
        address = server.address
        clusters = ensure_clusters(args, address, workdir, clusters_holder)
        datasets = [] if args.scaling_only else make_datasets(args, clusters)
        result.setdefault("data", {}).update({ds.name: ds.description for ds in datasets})
        matrix: dict[str, Any] = result.setdefault("recall_latency", {})
        for ds in datasets:
            for index_type in args.indexes:
                name = f"b_{ds.name}_{index_type.lower()}"
                log(f"[lite] {ds.name} {index_type}")
                entry = prepare_collection(address, name, index_type, ds.rows, ds.queries[0], args)
                entry["index_files_built_before_measuring"] = lite_index_built(db, name)
                entry["per_k"] = recall_latency(address, name, ds.queries, ds.truth, args.ks, args.measure_budget,
                                                metrics_port)
                log(f"  {json.dumps({k: v for k, v in entry['per_k'].items() if k.isdigit()})}")
                matrix.setdefault(ds.name, {})[index_type] = entry
                if ds.name == "clustered" and index_type == "HNSW" and args.qps:
                    try:
                        result["qps_lite"] = lite_qps(args, address, server.proc.pid, db, name, ds, workdir)
                    except Exception as e:  # the rest of the matrix is still worth measuring
                        result["qps_lite"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                        log(f"[lite] QPS failed: {e}")
                with Client(address) as client:
                    client.drop_collection(name)
        result.setdefault("scaling", {}).setdefault("lite", {}).update(scaling_points(
            args, address, clusters, "lite", db,
            serve_for_dim=lambda dim: serve_dim(workdir, dim, *lite, "--data-dir", str(workdir / f"lite-data-{dim}d")),
            seed_dir=workdir / "lite-server-data" if args.reuse_lite_files else None,
            db_for_dim=lambda dim: workdir / f"lite-data-{dim}d" / "milvus.db"))
        if not args.scaling_only:  # else the earlier run's log of the matrix stays; each point keeps its own
            result.setdefault("server_logs", {})["lite"] = log_findings(server)


def lite_qps(args: argparse.Namespace, address: str, server_pid: int, db: Path, name: str, ds: DataSet,
             workdir: Path) -> dict[str, Any]:
    """gRPC vs a pymilvus MilvusClient opened on a copy of the same collection's Milvus Lite folder."""
    from pymilvus import MilvusClient

    log("[lite] QPS: calibrating for min_recall 0.9 too")
    low = wait_calibrated(address, name, LOW_TARGET, ds.queries[0], args.calibration_timeout)
    high = {"calibrations": [c for c in calibrations(address, name) if abs(c["target"] - RECALL_TARGET) < 1e-3]}
    ef_high, ef_low = effort_for(high, QPS_K, default_ef(QPS_K)), effort_for(low, QPS_K, default_ef(QPS_K))
    copy = workdir / "direct-lite.db"
    shutil.rmtree(copy, ignore_errors=True)
    started = time.monotonic()
    shutil.copytree(db / "collections" / name, copy / "collections" / name)
    direct = MilvusClient(str(copy))
    try:
        direct.load_collection(name)
        loaded_s = time.monotonic() - started
        lists = [q.tolist() for q in ds.queries]
        make_high = direct_search(lambda: direct, lambda c: None, name, lists, QPS_K, ef_high, {})
        make_low = direct_search(lambda: direct, lambda c: None, name, lists, QPS_K, ef_low, {})
        sanity = {"direct_recall_at_10_ef_high": direct_recall(make_high()[0], ds.truth, 50),
                  "direct_recall_at_10_ef_low": direct_recall(make_low()[0], ds.truth, 50)}
        log(f"[lite] QPS phases (ef {ef_high} / {ef_low}); {sanity}")
        n, c, w, d = len(ds.queries), args.clients, args.qps_warmup, args.qps_duration
        phases = {
            "qps_grpc_lite": lambda: measure_qps(grpc_search(address, name, ds.queries, QPS_K), n, c, w, d),
            "qps_direct_lite": lambda: measure_qps(make_high, n, c, w, d),
            "qps_grpc_lite_min_recall_0.9": lambda: measure_qps(
                grpc_search(address, name, ds.queries, QPS_K, LOW_TARGET), n, c, w, d),
            "qps_direct_lite_ef_for_0.9": lambda: measure_qps(make_low, n, c, w, d),
        }
        figures = interleaved_qps(phases, args.qps_rounds, server_pid)
    finally:
        direct.close()
        shutil.rmtree(copy, ignore_errors=True)
    return {
        "collection": f"{name}: the clustered data set, HNSW, cosine, {len(ds.rows)} rows",
        "direct_client": (f"pymilvus MilvusClient on a copy of the server's collection folder (Milvus Lite in this "
                          f"process, loaded in {loaded_s:.1f} s), shared by all threads; limit {QPS_K}, "
                          f"output_fields ['id'], ef = the server's calibrated effort for k={QPS_K} (its default "
                          f"{default_ef(QPS_K)} when it has no calibration)"),
        "ef": {"0.99": ef_high, "0.9": ef_low},
        "calibration_0.9": low,
        **sanity,
        **figures,
    }


def scaling_points(args: argparse.Namespace, address: str, clusters: Clusters, store: str, db: Path | None = None,
                   uri: str = "", serve_for_dim: Callable[[int], contextlib.AbstractContextManager[str]] | None = None,
                   seed_dir: Path | None = None, reuse_dir: Path | None = None,
                   db_for_dim: Callable[[int], Path] | None = None) -> dict[str, Any]:
    """Ingest rate, single-query latency, batched and concurrent QPS at every size in --scaling. A point of
    another dimension is served by its own `lookalike serve` (db_for_dim: where its Milvus Lite data lies)."""
    out: dict[str, Any] = {}
    for rows, dim in args.scaling:
        label = f"{rows}x{dim}"
        log(f"[{store}] scaling {label}")
        try:
            if dim == MODEL_DIM:
                out[label] = scaling_point(args, address, clusters, rows, dim, store, db, uri, seed_dir, reuse_dir)
            elif serve_for_dim is not None:
                with serve_for_dim(dim) as other:
                    out[label] = scaling_point(args, other, clusters, rows, dim, store,
                                               db_for_dim(dim) if db_for_dim else None, uri, seed_dir, reuse_dir)
                    out[label]["server_log"] = log_findings(SERVERS[other])
            else:
                out[label] = {"skipped": "no server for this dimension"}
        except Exception as e:  # one point failing must not lose the rest of the run
            out[label] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            log(f"  {label} failed: {e}")
        log(f"  {label}: {json.dumps({k: v for k, v in out[label].items() if k != 'calibration_wait'})[:600]}")
    return out


def project(vectors: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """The clustered data in another dimension: a fixed random projection, normalised."""
    if vectors.shape[1] == dim:
        return vectors
    basis = np.random.default_rng(seed).standard_normal((vectors.shape[1], dim), dtype=np.float32)
    out = vectors @ basis
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def scaling_name(rows: int, dim: int) -> str:
    return f"s_{rows}_{dim}"


def scaling_point(args: argparse.Namespace, address: str, clusters: Clusters, rows: int, dim: int, store: str,
                  db: Path | None, uri: str, seed_dir: Path | None, reuse_dir: Path | None) -> dict[str, Any]:
    """One size on one store. seed_dir: copy the finished Milvus Lite collection there (for the lite-server
    store, the same engine); reuse_dir: that copy is already in this store's data, so skip the ingest.

    --scaling-cap counts from the end of making the data: an ingest past it ends the point (`stopped`, with
    the rows that were in), a calibration wait past it leaves the point uncalibrated (--scaling-reserve seconds
    stay for the queries), and query phases past it are cut short or skipped; `cap` lists every phase cut."""
    started = time.monotonic()
    data = project(clusters.sample(rows, 11), dim, 12)
    queries = project(clusters.sample(args.scaling_queries, 13), dim, 12)
    truth = exact_top(data, queries, 10)
    name = scaling_name(rows, dim)
    out: dict[str, Any] = {"data_seconds": round(time.monotonic() - started, 1)}
    cap = Cap(args.scaling_cap)
    try:
        if reuse_dir is not None and (reuse_dir / "collections" / name).is_dir():
            out["ingest"] = {"reused": "the in-process Milvus Lite store's finished collection files (same engine, "
                                       "same rows, index already built), copied into this store's data directory "
                                       "before it started"}
            wait_s = args.calibration_timeout
            if args.scaling_cap:
                wait_s = max(0.0, min(wait_s, cap.left() - args.scaling_reserve))
            out["calibration_wait"] = wait_calibrated(address, name, RECALL_TARGET, queries[0], wait_s)
            log(f"  calibrated after {out['calibration_wait']['waited_s']} s: "
                f"{out['calibration_wait']['calibrations']}")
        else:
            waits = args.scaling_cap and (db is not None or uri)
            out.update(prepare_collection(
                address, name, "HNSW", data, queries[0], args, cap if args.scaling_cap else None,
                (lambda: wait_index(name, db, uri, cap, args.scaling_reserve)) if waits else None))
        del data
        if db is not None:
            out["index_files_built_before_measuring"] = lite_index_built(db, name)
        elif uri:
            out["describe_index_before_measuring"] = server_index_state(uri, name)
        wait = out["calibration_wait"]
        if wait.get("timed_out"):
            cap.cut("calibration", "time" if args.scaling_cap and wait["waited_s"] < args.calibration_timeout
                    else f"--calibration-timeout {args.calibration_timeout:.0f} s", waited_s=wait["waited_s"],
                    index_built=out.get("index_files_built_before_measuring",
                                        out.get("describe_index_before_measuring")),
                    consequence="measured uncalibrated (the server's default effort), while the server may still "
                                "be building the index or calibrating")
        if seed_dir is not None and db is not None:
            shutil.copytree(db / "collections" / name, seed_dir / "collections" / name)
        if why := cap.exceeded():
            raise CapReached(cap.cut("single_query", why, queries_measured=0))
        with Client(address, timeout=300) as client:
            client.search(queries[0], k=10, collection=name)
            lat, recalls = [], []
            for i, q in enumerate(queries):
                if i >= 3 and (why := cap.exceeded()):
                    cap.cut("single_query", why, queries_measured=i, queries_wanted=len(queries))
                    break
                begun = time.perf_counter()
                hits = client.search(q, k=10, collection=name)
                lat.append(time.perf_counter() - begun)
                recalls.append(len({h.id for h in hits} & {row_id(r) for r in truth[i]}) / 10)
            out["single_query_k10"] = {**percentiles(lat), "recall_at_10": round(float(np.mean(recalls)), 4)}
            batch = [queries[i % len(queries)] for i in range(args.batch)]
            client.search_many(batch, k=10, collection=name)
            calls, begun = 0, time.monotonic()
            while calls < 3 or time.monotonic() - begun < args.batch_seconds:
                client.search_many(batch, k=10, collection=name)
                calls += 1
                if why := cap.exceeded():
                    cap.cut("batched", why, calls=calls)
                    break
            seconds = time.monotonic() - begun
        out["batched_k10"] = {"queries_per_call": args.batch, "calls": calls,
                              "qps": round(calls * args.batch / seconds, 1),
                              "ms_per_call": round(1e3 * seconds / calls, 1)}
        if cap.left() < args.qps_warmup + args.scaling_qps_duration + 10:
            cap.cut("concurrent", "time", skipped=True)
        else:
            out["concurrent_k10"] = measure_qps(grpc_search(address, name, queries, 10), len(queries), args.clients,
                                                args.qps_warmup, args.scaling_qps_duration)
    except CapReached as e:
        out["stopped"] = e.record
    finally:
        out["cap"] = cap.summary()
        with contextlib.suppress(Exception), Client(address, timeout=600) as client:
            client.drop_collection(name)
    return out


def lite_server_block(args: argparse.Namespace, workdir: Path, result: dict[str, Any],
                      clusters_holder: list[Clusters]) -> None:
    """`milvus-lite server` as a child process, lookalike pointed at it with --milvus-uri."""
    data_dir = workdir / "lite-server-data"  # may already hold the in-process store's scaling collections
    milvus = MilvusLiteServer(data_dir)
    uri = milvus.start()
    try:
        with lookalike_serve(workdir / "serve-lite-server", "--milvus-uri", uri,
                             "--data-dir", str(workdir / "unused-lite-server")) as (server, _):
            clusters = ensure_clusters(args, server.address, workdir, clusters_holder)
            scaling = scaling_points(args, server.address, clusters, "lite-server",
                                     serve_for_dim=lambda dim: serve_dim(workdir, dim, "--milvus-uri", uri),
                                     reuse_dir=data_dir)
            result.setdefault("scaling", {}).setdefault("lite-server", {}).update(scaling)
            if not args.scaling_only:
                result.setdefault("server_logs", {})["lite-server"] = log_findings(server)
    finally:
        milvus.stop()


@contextlib.contextmanager
def serve_dim(workdir: Path, dim: int, *store_args: str) -> Iterator[str]:
    """Another `lookalike serve` on the same store whose (bench) model card declares `dim`."""
    card = model_card(dim, workdir / "cards")
    with lookalike_serve(workdir / f"serve-{dim}d-{time.monotonic_ns()}", *store_args, "--model-card",
                         str(card)) as (server, _):
        yield server.address


def standalone_block(args: argparse.Namespace, workdir: Path, result: dict[str, Any],
                     clusters_holder: list[Clusters]) -> None:
    """The real Milvus standalone (PyPI `milvus`): recall and QPS on the clustered HNSW collection, and scaling
    (--scaling-only: that alone)."""
    if not milvus_standalone.available(STANDALONE_VENV):
        result["qps_standalone"] = {"skipped": f"{STANDALONE_VENV} has no `milvus` package (make milvus-standalone)"}
        return
    milvus = milvus_standalone.MilvusStandalone(workdir / "standalone", venv=STANDALONE_VENV)
    log("[standalone] starting Milvus standalone")
    uri = milvus.start()
    try:
        log(f"[standalone] up at {uri} in {milvus.start_seconds:.1f} s")
        with lookalike_serve(workdir / "serve-standalone", "--milvus-uri", uri,
                             "--data-dir", str(workdir / "unused-standalone")) as (server, metrics_port):
            address = server.address
            clusters = ensure_clusters(args, address, workdir, clusters_holder)
            if not args.scaling_only:
                standalone_recall_qps(args, address, metrics_port, uri, milvus.server_pid, clusters, result)
            result.setdefault("scaling", {}).setdefault("standalone", {}).update(scaling_points(
                args, address, clusters, "standalone", uri=uri,
                serve_for_dim=lambda dim: serve_dim(workdir, dim, "--milvus-uri", uri)))
            if not args.scaling_only:
                result.setdefault("server_logs", {})["standalone"] = log_findings(server)
    finally:
        milvus.stop()


# Index types only a Milvus server builds (Milvus Lite refuses them): measured on the standalone alone.
SERVER_ONLY_INDEXES = ("IVF_PQ", "SCANN")


def standalone_indexes_block(args: argparse.Namespace, workdir: Path, result: dict[str, Any],
                             clusters_holder: list[Clusters]) -> None:
    """The index types a Milvus server adds (IVF_PQ, ScaNN) on the real standalone: recall and latency on both
    data sets, measured as the Lite matrix is (after the server's calibration, which waits for the index)."""
    if not milvus_standalone.available(STANDALONE_VENV):
        result["recall_latency_standalone_server_indexes"] = {
            "skipped": f"{STANDALONE_VENV} has no `milvus` package (make milvus-standalone)"}
        return
    milvus = milvus_standalone.MilvusStandalone(workdir / "standalone-indexes", venv=STANDALONE_VENV)
    log("[standalone-indexes] starting Milvus standalone")
    uri = milvus.start()
    try:
        with lookalike_serve(workdir / "serve-standalone-indexes", "--milvus-uri", uri,
                             "--data-dir", str(workdir / "unused-standalone-indexes")) as (server, metrics_port):
            address = server.address
            clusters = ensure_clusters(args, address, workdir, clusters_holder)
            datasets = make_datasets(args, clusters)
            result.setdefault("data", {}).update({ds.name: ds.description for ds in datasets})
            matrix: dict[str, Any] = result.setdefault("recall_latency_standalone_server_indexes", {})
            for ds in datasets:
                for index_type in SERVER_ONLY_INDEXES:
                    name = f"si_{ds.name}_{index_type.lower()}"
                    log(f"[standalone-indexes] {ds.name} {index_type}")
                    def wait(name: str = name) -> dict[str, Any]:  # the cap starts once the rows are in
                        return wait_index(name, None, uri, Cap(args.index_timeout), 0.0)

                    entry = prepare_collection(address, name, index_type, ds.rows, ds.queries[0], args,
                                               index_wait=wait)
                    entry["describe_index_before_measuring"] = server_index_state(uri, name)
                    entry["per_k"] = recall_latency(address, name, ds.queries, ds.truth, args.ks,
                                                    args.measure_budget, metrics_port)
                    log(f"  {json.dumps({k: v for k, v in entry['per_k'].items() if k.isdigit()})}")
                    matrix.setdefault(ds.name, {})[index_type] = entry
                    with Client(address) as client:
                        client.drop_collection(name)
            result.setdefault("server_logs", {})["standalone-indexes"] = log_findings(server)
    finally:
        milvus.stop()


def standalone_recall_qps(args: argparse.Namespace, address: str, metrics_port: int, uri: str, server_pid: int | None,
                          clusters: Clusters, result: dict[str, Any]) -> None:
    """The standalone's recall/latency on the clustered HNSW collection and its gRPC vs direct QPS."""
    from pymilvus import MilvusClient

    ds = make_datasets(argparse.Namespace(**{**vars(args), "datasets": ["clustered"]}), clusters)[0]
    result.setdefault("data", {})["clustered_standalone_block"] = ds.description
    name = "b_clustered_hnsw"
    entry = prepare_collection(address, name, "HNSW", ds.rows, ds.queries[0], args,
                               index_wait=lambda: wait_index(name, None, uri, Cap(args.index_timeout), 0.0))
    entry["describe_index_before_measuring"] = server_index_state(uri, name)
    entry["per_k"] = recall_latency(address, name, ds.queries, ds.truth, args.ks, args.measure_budget,
                                    metrics_port)
    log(f"  {json.dumps({k: v for k, v in entry['per_k'].items() if k.isdigit()})}")
    result.setdefault("recall_latency_standalone", {})["clustered"] = {"HNSW": entry}
    if args.qps:
        low = wait_calibrated(address, name, LOW_TARGET, ds.queries[0], args.calibration_timeout)
        high = {"calibrations": [c for c in calibrations(address, name)
                                 if abs(c["target"] - RECALL_TARGET) < 1e-3]}
        ef_high, ef_low = effort_for(high, QPS_K, default_ef(QPS_K)), effort_for(low, QPS_K, default_ef(QPS_K))
        lists = [q.tolist() for q in ds.queries]
        session = {"consistency_level": "Session"}
        make_high = direct_search(lambda: MilvusClient(uri), lambda c: c.close(), name, lists, QPS_K, ef_high,
                                  session)
        make_low = direct_search(lambda: MilvusClient(uri), lambda c: c.close(), name, lists, QPS_K, ef_low,
                                 session)
        probe, close = make_high()
        sanity = {"direct_recall_at_10_ef_high": direct_recall(probe, ds.truth, 50)}
        close()
        probe, close = make_low()
        sanity["direct_recall_at_10_ef_low"] = direct_recall(probe, ds.truth, 50)
        close()
        n, c, w, d = len(ds.queries), args.clients, args.qps_warmup, args.qps_duration
        phases = {
            "qps_grpc_standalone": lambda: measure_qps(grpc_search(address, name, ds.queries, QPS_K),
                                                       n, c, w, d),
            "qps_direct_standalone": lambda: measure_qps(make_high, n, c, w, d),
            "qps_grpc_standalone_min_recall_0.9": lambda: measure_qps(
                grpc_search(address, name, ds.queries, QPS_K, LOW_TARGET), n, c, w, d),
            "qps_direct_standalone_ef_for_0.9": lambda: measure_qps(make_low, n, c, w, d),
        }
        log(f"[standalone] QPS phases (ef {ef_high} / {ef_low}); {sanity}")
        figures = interleaved_qps(phases, args.qps_rounds, server_pid)
        result["qps_standalone"] = {
            "collection": f"{name}: the clustered data set, HNSW, cosine, {len(ds.rows)} rows",
            "direct_client": (f"pymilvus MilvusClient per thread to {uri}, limit {QPS_K}, output_fields "
                              "['id'], Session consistency (as lookalike reads), ef = the server's "
                              f"calibrated effort for k={QPS_K} (its default {default_ef(QPS_K)} when "
                              "it has no calibration)"),
            "ef": {"0.99": ef_high, "0.9": ef_low}, "calibration_0.9": low, **sanity, **figures,
            "cpu_note": "watched_process_s is the milvus server process",
        }
    with Client(address) as client:
        client.drop_collection(name)


def native_block() -> dict[str, Any]:
    """bench/native.py as a subprocess; its JSON as it printed it, plus the two speed-ups against the target."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "bench" / "native.py")], capture_output=True, text=True,
                          timeout=900, check=True)
    figures = json.loads(done.stdout)
    speedups = {name: figures[name]["native_vs_numpy"] for name in ("normalize_rows", "rerank",
                                                                     "rerank_same_candidates") if name in figures}
    return {"seconds": round(time.monotonic() - started, 1), "speedups": speedups,
            "pass_2x": {name: value >= 2 for name, value in speedups.items()}, "native_py": figures}


# Summary


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets with pass/fail, and which store serves the largest size best."""
    summary: dict[str, Any] = {}
    worst: dict[str, Any] = {}
    for source in ("recall_latency", "recall_latency_standalone", "recall_latency_standalone_server_indexes"):
        for ds, per_index in result.get(source, {}).items():
            if not isinstance(per_index, dict):  # a block skipped, with its reason
                continue
            for index_type, entry in per_index.items():
                for k, figures in entry.get("per_k", {}).items():
                    if k.isdigit():
                        worst[f"{source}/{ds}/{index_type}/k={k}"] = figures["recall_at_10"]
    if worst:
        low = min(worst, key=worst.__getitem__)
        summary["recall_at_10_min"] = {"value": worst[low], "where": low, "target": RECALL_TARGET,
                                       "pass": worst[low] >= RECALL_TARGET,
                                       "below_target": {k: v for k, v in worst.items() if v < RECALL_TARGET}}
    for store, target in (("lite", 5.0), ("standalone", 1.0)):
        block = result.get(f"qps_{store}", {})
        grpc, direct = block.get(f"qps_grpc_{store}", {}).get("qps"), block.get(f"qps_direct_{store}", {}).get("qps")
        low_grpc = block.get(f"qps_grpc_{store}_min_recall_0.9", {}).get("qps")
        low_direct = block.get(f"qps_direct_{store}_ef_for_0.9", {}).get("qps")
        if grpc is not None:
            summary[f"qps_grpc_{store}"] = grpc
            summary[f"qps_direct_{store}"] = direct
            summary[f"qps_grpc_{store}_min_recall_0.9"] = low_grpc
            summary[f"qps_direct_{store}_ef_for_0.9"] = low_direct
            summary[f"ratio_{store}"] = {"value": ratio(grpc, direct), "target": target,
                                         "pass": bool(ratio(grpc, direct) and ratio(grpc, direct) >= target),
                                         "at_min_recall_0.9": ratio(low_grpc, low_direct)}
    native = result.get("native_vs_numpy", {})
    if "speedups" in native:
        summary["native_vs_numpy"] = {**native["speedups"], "target": 2.0, "pass": native["pass_2x"]}
    failures = calibration_failures(result)
    if failures:
        summary["calibration_failures"] = failures
    summary["recommended_default"] = recommend(result.get("scaling", {}))
    return summary


def calibration_failures(node: Any, path: str = "") -> dict[str, str]:
    """Every wait that ended because the server logged a failed calibration, by where it happened."""
    found: dict[str, str] = {}
    if isinstance(node, dict):
        if node.get("failed") and "server_error" in node:
            found[path] = node["server_error"]
        for key, value in node.items():
            if key != "summary":
                found.update(calibration_failures(value, f"{path}/{key}" if path else key))
    return found


def recommend(scaling: dict[str, Any], target_rows: int = 1_000_000) -> dict[str, Any]:
    """Which store should serve a million rows. Where points of target_rows were measured: among the stores
    that served theirs (all rows in and queries measured within the cap), the lowest single-query p50 wins, and
    p50s within 10% of the best are decided by batched QPS. Otherwise each store's single-query p50 and batched
    call time are fitted linearly over its measured sizes of the model's dimension (Milvus Lite's per-call cost
    is a Python loop over every row) and projected to target_rows; the lowest projected single-query p50 wins."""
    table: dict[str, Any] = {}
    for store, points in scaling.items():
        done = sorted(((int(label.split("x")[0]), p) for label, p in points.items()
                       if "single_query_k10" in p and label.endswith(f"x{MODEL_DIM}")), key=lambda x: x[0])
        if len(done) < 2:
            continue
        rows = np.array([r for r, _ in done], dtype=np.float64)
        p50 = np.array([p["single_query_k10"]["p50"] for _, p in done])
        call = np.array([p["batched_k10"]["ms_per_call"] for _, p in done])
        batch = done[-1][1]["batched_k10"]["queries_per_call"]
        p50_fit, call_fit = np.polyfit(rows, p50, 1), np.polyfit(rows, call, 1)
        largest = done[-1][1]
        table[store] = {
            "measured_rows": [int(r) for r in rows],
            "single_query_p50_ms": [float(x) for x in p50],
            "batched_qps": [p["batched_k10"]["qps"] for _, p in done],
            "concurrent_qps_32_clients": [p["concurrent_k10"]["qps"] for _, p in done],
            "ingest_rows_per_s": [p["ingest"].get("rows_per_s") for _, p in done],
            "single_query_p50_growth_smallest_to_largest": round(float(p50[-1] / p50[0]), 2),
            f"projected_single_query_p50_ms_at_{target_rows}": round(float(np.polyval(p50_fit, target_rows)), 1),
            f"projected_batched_qps_at_{target_rows}": round(
                float(batch * 1e3 / max(1e-3, np.polyval(call_fit, target_rows))), 1),
            "largest_point_calibrated": bool(largest.get("calibration_wait", {}).get("calibrations")),
        }
    measured = {store: at_size(label, point) for store, points in scaling.items()
                for label, point in points.items() if int(label.split("x")[0]) == target_rows}
    flag = {"lite": "--milvus-embedded lite", "lite-server": "--milvus-embedded lite-server",
            "standalone": "--milvus-embedded standalone"}
    served = [store for store, figures in measured.items() if figures["served"]]
    caveats = []
    if served:
        fastest = min(measured[store]["single_query_p50_ms"] for store in served)
        close = [store for store in served if measured[store]["single_query_p50_ms"] <= 1.1 * fastest]
        best = max(close, key=lambda store: measured[store]["batched_qps"] or 0.0)
        criterion = (f"measured at {target_rows:,} rows: among the stores that served them within the cap (all "
                     "rows in, queries measured), the lowest single-query p50 (k=10, one client); p50s within 10% "
                     "of the lowest are decided by the higher batched QPS (32 queries per search_many call)")
        for other in served:
            for key, label in (("batched_qps", "batched QPS"), ("concurrent_qps_32_clients", "32-client QPS")):
                if (measured[other][key] or 0.0) > (measured[best][key] or 0.0) and other != best:
                    caveats.append(f"{other} beats {best} on {label} at {target_rows:,} rows "
                                   f"({measured[other][key]} vs {measured[best][key]})")
        caveats += [f"{store}: did not finish every phase at {target_rows:,} rows within its cap: "
                    f"{figures['stopped_or_cut']}" for store, figures in measured.items()
                    if not figures["finished_within_cap"]]
        caveats += [f"{store}: its {target_rows:,}-row point ran uncalibrated, at the server's default effort"
                    for store in served if not measured[store]["calibrated"]]
        if not measured[best]["point"].endswith(f"x{MODEL_DIM}"):
            caveats.append(f"the {target_rows:,}-row points are {measured[best]['point']}, another dimension than "
                           f"the {MODEL_DIM}-d smaller points: per-row costs differ by dimension")
        caveats.append("stores were measured one after another on a shared 2-core machine (see each run's load)")
    elif table:
        key = f"projected_single_query_p50_ms_at_{target_rows}"
        best = min(table, key=lambda store: table[store][key])
        criterion = key
        caveats = [f"{store}: its largest size ran uncalibrated (the server's calibration failed), at the default "
                   f"ef {default_ef(10)} instead of a calibrated one, so its throughput there is understated"
                   for store, figures in table.items() if not figures["largest_point_calibrated"]]
        caveats.append("stores were measured one after another on a shared 2-core machine (see each run's load); "
                       "the projection is a straight line through the measured sizes, not a measurement")
        caveats += [f"{store}: did not finish {target_rows:,} rows: {figures['stopped_or_cut']}"
                    for store, figures in measured.items()]
    else:
        return {"store": None, "reason": f"no store finished {target_rows:,} rows and fewer than two sizes were "
                                         "measured per store", f"measured_at_{target_rows}": measured}
    return {"store": best, "serve_flag": flag.get(best), "criterion": criterion,
            f"measured_at_{target_rows}": measured, "projection_from_model_dimension_points": table,
            "caveats": caveats, "current_serve_default": current_serve_default()}


def at_size(label: str, point: dict[str, Any]) -> dict[str, Any]:
    """One store's figures at one size, and whether it finished every phase within the cap."""
    cap = point.get("cap", {})
    cuts = cap.get("phases_cut", [])
    served = "single_query_k10" in point and "batched_k10" in point and not point.get("stopped")
    finished = served and "concurrent_k10" in point and not cuts
    return {
        "point": label,
        "served": served,
        "finished_within_cap": finished,
        "ingest_rows_per_s": point.get("ingest", {}).get("rows_per_s"),
        "single_query_p50_ms": point.get("single_query_k10", {}).get("p50"),
        "single_query_p99_ms": point.get("single_query_k10", {}).get("p99"),
        "recall_at_10": point.get("single_query_k10", {}).get("recall_at_10"),
        "batched_qps": point.get("batched_k10", {}).get("qps"),
        "concurrent_qps_32_clients": point.get("concurrent_k10", {}).get("qps"),
        "calibrated": bool(point.get("calibration_wait", {}).get("calibrations")),
        "seconds": cap.get("seconds"),
        **({} if finished else {"stopped_or_cut": point.get("stopped") or cuts or point.get("error")
                                or "no figures"}),
    }


def current_serve_default() -> str:
    from lookalike_server.config import ServerConfig

    return f"{ServerConfig.milvus_embedded} (ServerConfig.milvus_embedded of the installed server)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "search",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "server_package": installed_server(),
        "settings": {
            "rows": args.rows, "dimension": MODEL_DIM, "metric": "cosine", "queries": args.queries,
            "ks": args.ks, "indexes": args.indexes, "datasets": args.datasets, "clusters": args.clusters,
            "centres": args.centres, "min_recall_default": RECALL_TARGET, "qps_clients": args.clients,
            "qps_k": QPS_K, "qps_warmup_s": args.qps_warmup, "qps_duration_s": args.qps_duration,
            "qps_rounds": args.qps_rounds, "scaling": [f"{r}x{d}" for r, d in args.scaling],
            "scaling_queries": args.scaling_queries, "batch": args.batch, "scaling_only": args.scaling_only,
            "scaling_cap_s": args.scaling_cap or None, "scaling_reserve_s": args.scaling_reserve,
            "server": "lookalike serve (this venv's installed build), defaults but --metrics-port",
        },
    }
    clusters_holder: list[Clusters] = []
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-search-") as tmp:
        workdir = Path(tmp)
        every: dict[str, Callable[[], None]] = {
            "native": lambda: result.__setitem__("native_vs_numpy", native_block()),
            "lite": lambda: lite_block(args, workdir, result, clusters_holder),
            "lite-server": lambda: lite_server_block(args, workdir, result, clusters_holder),
            "standalone": lambda: standalone_block(args, workdir, result, clusters_holder),
            "standalone-indexes": lambda: standalone_indexes_block(args, workdir, result, clusters_holder),
        }
        # --scaling-only keeps the blocks it runs too: their scaling points are replaced or added one by one.
        run_now = [] if args.scaling_only else [b for b in every if b in args.blocks]
        earlier_points: dict[str, dict[str, Any]] = {}  # scaling points of the merged files, by store
        for earlier in args.merge:  # later files win
            path, only = merge_spec(earlier)
            previous = json.loads(Path(path).read_text())
            merge_previous(result, previous, run_now + [b for b in BLOCK_KEYS if only and b not in only])
            for store, points in previous.get("scaling", {}).items():
                if not only or store in only:
                    earlier_points.setdefault(store, {}).update(points)
        blocks = [(name, every[name]) for name in every if name in args.blocks]
        for name, block in blocks:
            block_started = time.monotonic()
            build = installed_server()  # the servers this block starts run the build installed now
            kept = result.get("provenance", {}).get(name) if args.scaling_only else None
            log(f"=== {name}")
            try:
                block()
            except (Exception, TimeoutError) as e:
                result.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"[:4000]
                log(f"{name} failed: {type(e).__name__}: {e}")
                if isinstance(e, TimeoutError):
                    break
            seconds = round(time.monotonic() - block_started, 1)
            earlier_s = result.get("phase_seconds", {}).get(name, 0.0) if kept else 0.0
            result.setdefault("phase_seconds", {})[name] = round(earlier_s + seconds, 1)
            result.setdefault("provenance", {})[name] = {
                "run_started": result["date"],
                "load_average_1m_at_run_start": result["machine"]["load_average_1m_at_start"],
                "server_build_at_block_start": {k: build[k] for k in ("sha256_16_of_modules", "installed_at")}}
            if kept:
                result["provenance"][name].update(
                    scaling_points_this_run=[f"{r}x{d}" for r, d in args.scaling], seconds_this_run=seconds,
                    other_figures=kept)
    for name in run_now:  # a block run again keeps the scaling points this run did not measure (the 1M ones)
        points = result.get("scaling", {}).get(name)
        kept = [p for p in earlier_points.get(name, {}) if points is not None and p not in points]
        for point in kept:
            points[point] = earlier_points[name][point]
        if kept:
            result["provenance"][name]["scaling_points_kept_from_merged_file"] = kept
    for name in args.datasets:  # blocks merged from a run that did not record its data description
        result.setdefault("data", {}).setdefault(name, dataset_description(
            name, args, "EfficientNet-Lite0 embeddings of augmented scikit-image photos" if args.centres == "photos"
            else "random unit vectors"))
    try:
        result["summary"] = summarise(result)
    except Exception as e:  # the figures above are still worth printing
        result["summary"] = {"error": f"{type(e).__name__}: {e}"}
    result["total_seconds_this_invocation"] = round(time.monotonic() - started, 1)
    result["measured_seconds_all_blocks"] = round(sum(result.get("phase_seconds", {}).values()), 1)
    result["notes"] = notes(args, result)
    return result


# Where each block's figures live in the result, so a later run can redo some blocks and keep the others.
BLOCK_KEYS: dict[str, list[tuple[str, ...]]] = {
    "native": [("native_vs_numpy",)],
    "lite": [("recall_latency",), ("qps_lite",), ("scaling", "lite"), ("server_logs", "lite")],
    "lite-server": [("scaling", "lite-server"), ("server_logs", "lite-server")],
    "standalone": [("recall_latency_standalone",), ("qps_standalone",), ("scaling", "standalone"),
                   ("server_logs", "standalone")],
    "standalone-indexes": [("recall_latency_standalone_server_indexes",), ("server_logs", "standalone-indexes")],
}


LEGACY_BLOCK_NAMES = {"native_vs_numpy": "native"}


def own_blocks(previous: dict[str, Any]) -> list[str]:
    """The blocks an earlier result holds figures of: measured by it, or merged into it with their provenance
    (a result that merged everything, as bench/results/search.json, is merged again whole)."""
    ran = [LEGACY_BLOCK_NAMES.get(name, name) for name in previous.get("phase_seconds", {})]
    if "provenance" in previous:
        return [b for b in ran if b in previous["provenance"]]
    merged = previous.get("merged_from_earlier_run", {}).get("blocks", [])
    return [b for b in ran if b not in merged]


def merge_spec(text: str) -> tuple[str, list[str]]:
    """--merge FILE or FILE:BLOCK,BLOCK (only those blocks taken from FILE)."""
    path, _, names = text.rpartition(":")
    blocks = names.split(",")
    return (path, blocks) if path and all(b in BLOCK_KEYS for b in blocks) else (text, [])


def merge_previous(result: dict[str, Any], previous: dict[str, Any], skip: list[str]) -> None:
    """Copies the figures of the blocks an earlier result holds (except `skip`, run now) into result;
    `provenance` says which invocation measured each block, when, and under what machine load."""
    for block in own_blocks(previous):
        if block in skip:
            continue
        for path in BLOCK_KEYS[block]:
            node: Any = previous
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                continue
            target = result
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = node
        legacy = {v: k for k, v in LEGACY_BLOCK_NAMES.items()}
        for key in ("phase_seconds", "errors"):
            for name in (block, legacy.get(block, block)):
                if name in previous.get(key, {}):
                    result.setdefault(key, {})[block] = previous[key][name]
        earlier = previous.get("provenance", {}).get(block, {})
        if "merged" in earlier:  # measured by a run before that one: its provenance holds
            result.setdefault("provenance", {})[block] = earlier
            continue
        build = previous.get("server_package", {})
        result.setdefault("provenance", {})[block] = {
            **earlier,  # what a --scaling-only run says it added
            "run_started": previous.get("date"),
            "load_average_1m_at_run_start": previous.get("machine", {}).get("load_average_1m_at_start"),
            "server_build_at_block_start": earlier.get("server_build_at_block_start") or {
                k: build.get(k) for k in ("sha256_16_of_modules", "installed_at")},
            "merged": "measured by an earlier invocation of this script, copied here with --merge",
        }
    for name, value in previous.get("data", {}).items():
        result.setdefault("data", {}).setdefault(name, value)


def notes(args: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    measured_s = sum(result.get("phase_seconds", {}).values()) - sum(  # the matrix run, not added scaling points
        p.get("seconds_this_run", 0.0) for p in result.get("provenance", {}).values())
    out = [
        f"Sizes: {args.rows} rows of {MODEL_DIM}-d (the model's dimension) per collection in the recall/latency matrix "
        "and the QPS comparison, not 100,000: the matrix is 8 collections (2 data sets x 4 index types), each ingested "
        "through lookalike (about 800-2,000 rows/s here), indexed, and calibrated by the server (which reads every "
        "row for its exact reference), and 100,000 rows each would have doubled a run that already took "
        f"{measured_s / 60:.0f} minutes of measuring on this shared 2-core machine. Scaling points: "
        + "; ".join(f"{store} {', '.join(points)}" for store, points in result.get("scaling", {}).items()) + ".",
        "Index really built before measuring: every lossy collection was measured only after DescribeCollection "
        "reported the server's recall calibration for min_recall 0.99 (calibration_wait.waited_s; the server "
        "flushes and waits for the index before it calibrates), or after the server logged that its calibration "
        "failed (calibration_wait.failed). For Milvus Lite, whose describe_index always says Finished, "
        "index_files_built_before_measuring checks that an index file stands beside every flushed data segment (it "
        "cannot see rows still unflushed in the write-ahead log); for the standalone, describe_index_before_measuring "
        "shows indexed_rows and pending_index_rows.",
        "Recall is against exact numpy brute force over the same rows (inner product of unit vectors = cosine), with "
        "held-out queries; latency is one client thread, one query per call, the ks interleaved per query. A "
        f"collection's queries stop after {args.measure_budget:.0f} s (queries_measured says how many ran).",
        "QPS: 32 threads in this process, one query per call, by vector, k=10, random picks from the same held-out "
        "queries; phases interleaved round by round (gRPC 0.99, direct 0.99, gRPC 0.9, direct 0.9) because other "
        "benchmarks shared this machine; each round's cpu field splits the busy CPU between this process (clients, "
        "and for direct Lite the Milvus Lite engine itself, opened in this process on a copy of the collection's "
        "files), the watched process (the lookalike server for Lite, the milvus server for standalone) and "
        "everything else on the machine (other_processes_s).",
        "The direct clients ask Milvus for k=10 ids only, with the ef the server calibrated (its default 512 when it "
        "has no calibration); lookalike asks the float indexes (FLAT, HNSW, IVF_FLAT) for k ids and orders "
        "Milvus' own exact scores; it over-fetches (2k, at least k+32) with vectors and re-ranks exactly only "
        "for IVF_SQ8.",
        "scaling: clustered data (same centres), HNSW cosine, measured after the calibration wait; single_query_k10 "
        "is one thread; batched_k10 is search_many with 32 queries per call from one thread; concurrent_k10 is 32 "
        "threads, one query per call. The lite-server store reuses the in-process store's finished collection files "
        "(same engine and rows), so it has no ingest figure of its own.",
    ]
    million = {label: point for points in result.get("scaling", {}).values() for label, point in points.items()
               if label.startswith("1000000x")}
    if million:
        caps = {p.get("cap", {}).get("cap_s") for p in million.values()} - {None}
        out.append(f"1,000,000 rows ({', '.join(sorted(million))}; "
                   "a 256-d point is served through a copy of the model card declaring that dimension), ingested "
                   f"through gRPC like the smaller points, each store's point capped at "
                   f"{', '.join(f'{c:.0f}' for c in sorted(caps)) or 'no'} s from the end of making its data "
                   "(--scaling-cap): a phase past the cap is cut and recorded in the point's cap.phases_cut (which "
                   "phase, after how long, how many rows were in), the calibration wait leaves --scaling-reserve "
                   "seconds for the queries, and a point whose wait ran out is measured uncalibrated. At a million "
                   "rows the server's calibration takes its highest-effort search as the reference (not an exact "
                   "scan). Other work (tests, other benchmarks) may have shared the machine while these points ran: "
                   "the load at each run's start is in provenance.")
    elif not any(dim != MODEL_DIM for _, dim in args.scaling):
        lite = result.get("scaling", {}).get("lite", {}).get(f"100000x{MODEL_DIM}", {})
        rate = lite.get("ingest", {}).get("rows_per_s")
        wait = lite.get("calibration_wait", {}).get("waited_s")
        seen = (f"Milvus Lite stored {rate:.0f} rows/s and needed {wait / 60:.1f} more minutes to index and "
                "calibrate 100,000 rows here" if rate and wait else "Milvus Lite stores ~1,000 rows/s here")
        out.append(f"1,000,000 rows (at 256-d) skipped: {seen}, so a million on each of 3 stores would take hours. "
                   "recommended_default projects the measured sizes to a million instead. On a bigger machine run "
                   "`--scaling 10000x1280,100000x1280,1000000x256` (a 256-d point is served through a copy of the "
                   "model card declaring 256 dimensions).")
    if args.centres == "photos":
        out.append("Clustered centres are real EfficientNet-Lite0 embeddings of augmented photos; the rows around "
                   "them are synthetic (embedding 50,000 photos would take ~10 minutes of CPU here).")
    runs = {p.get("run_started") for p in result.get("provenance", {}).values()}
    if len(runs) > 1:
        out.append("The blocks come from more than one invocation (provenance: which, when, and the machine load at "
                   "its start); the data is the same (fixed seeds, the same photos and model; see the centres "
                   "fingerprint in data).")
    return out


def parse_scaling(text: str) -> list[tuple[int, int]]:
    points = []
    for part in filter(None, text.split(",")):
        rows, _, dim = part.partition("x")
        points.append((int(rows), int(dim or MODEL_DIM)))
    return points


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000, help="rows per collection in the recall/latency matrix")
    parser.add_argument("--queries", type=int, default=100, help="held-out queries per collection")
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 1000])
    parser.add_argument("--indexes", type=lambda s: s.split(","), default=list(INDEX_TYPES))
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=["clustered", "random"])
    parser.add_argument("--clusters", type=int, default=200, help="cluster centres of the clustered data set")
    parser.add_argument("--centres", choices=("photos", "random"), default="photos",
                        help="cluster centres: embeddings of augmented photos, or random unit vectors")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client threads for QPS")
    parser.add_argument("--qps-warmup", type=float, default=2.0)
    parser.add_argument("--qps-duration", type=float, default=10.0, help="measured seconds per QPS phase")
    parser.add_argument("--qps-rounds", type=int, default=2, help="interleaved rounds of the QPS phases")
    parser.add_argument("--no-qps", dest="qps", action="store_false")
    parser.add_argument("--scaling", type=parse_scaling, default=parse_scaling("10000x1280,100000x1280"),
                        help="ROWSxDIM points of the scaling curve, comma-separated")
    parser.add_argument("--scaling-queries", type=int, default=40)
    parser.add_argument("--scaling-qps-duration", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=32, help="queries per search_many call in the scaling curve")
    parser.add_argument("--batch-seconds", type=float, default=5.0)
    parser.add_argument("--measure-budget", type=float, default=90.0,
                        help="seconds at most for one collection's recall/latency queries")
    parser.add_argument("--calibration-timeout", type=float, default=900.0)
    parser.add_argument("--index-timeout", type=float, default=1800.0,
                        help="longest wait for a Milvus server to index every row before calibrating and measuring")
    parser.add_argument("--scaling-only", action="store_true",
                        help="run only the scaling points of the chosen blocks (no recall matrix, no QPS comparison); "
                             "with --merge, the blocks' other figures and other points are kept")
    parser.add_argument("--scaling-cap", type=float, default=0.0,
                        help="seconds at most per scaling point after its data is made (0: none); a phase that runs "
                             "past it is cut and recorded (which, after how long, how many rows were in)")
    parser.add_argument("--scaling-reserve", type=float, default=300.0,
                        help="with --scaling-cap, seconds of the cap the calibration wait leaves for the queries")
    parser.add_argument("--no-reuse-lite-files", dest="reuse_lite_files", action="store_false",
                        help="ingest the lite-server scaling collections afresh instead of copying the in-process "
                             "Milvus Lite store's finished ones (same engine and rows; saves the ingest and build)")
    parser.add_argument("--blocks", type=lambda v: v.split(","), default=list(BLOCK_KEYS),
                        help="which parts to run: native,lite,lite-server,standalone,standalone-indexes (default "
                             "all); 'none' with --merge recomputes the summary of an earlier run")
    parser.add_argument("--merge", action="append", default=[],
                        help="an earlier run's JSON (repeatable, later files win): the blocks it measured and that "
                             "are not run now are copied from it (provenance says when each block was measured); "
                             "FILE:lite,native takes only those blocks from FILE")
    parser.add_argument("--timeout", type=float, default=3600.0, help="the whole run stops after this many seconds")
    parser.add_argument("--write", action="store_true", help="also save bench/results/search.json")
    args = parser.parse_args(argv)
    with time_limit(args.timeout):
        result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "search.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
