"""Replicas over one Milvus: Search QPS and ingest throughput through 1 and through 2 `lookalike serve` replicas.

Everything runs here on loopback: one real Milvus standalone server (PyPI `milvus`, from lookalike[server]), two
replicas started with `--milvus-uri` pointing at it, and the clients in this process (threads, one
`lookalike.Client` each). Measured one phase after another, never overlapping:

  pymilvus_plain         32 threads, one MilvusClient each, straight to Milvus: k=10, ids only (the reference)
  pymilvus_like_replica  the same, asking Milvus what a replica asks before its recall calibration: an
                         over-fetch of 42 with the vectors, ef 512 (a calibrated replica may ask for more)
  search_1_replica       32 threads through replica A, one query per call, search by vector, k=10
  search_2_replicas      32 threads through "A,B" (the client's round_robin over both)
  ingest_1_replica       8 Ingest streams of vectors (one client) through A into a fresh collection
  ingest_2_replicas      8 Ingest streams through "A,B" (round_robin puts each new stream on the next replica)

Both replicas run during every phase; in the 1-replica phases B sits idle (its CPU time is in the figures).
Each phase reports who used the CPU while it ran, since on a 2-core machine the 32 client threads, both
replicas and Milvus all share the same two cores.

Run (after `make test` or `make setup`, which install lookalike[server]; about 4 minutes):
    .venv/bin/python bench/replicas.py [--vectors 20000] [--duration 20] [--write]
--write also saves the JSON to bench/results/replicas.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import (  # noqa: E402
    ManagedProcess,
    cores,
    emit,
    free_port,
    installed_server,
    log,
    machine_info,
    percentiles,
    ratio,
    time_limit,
)

from lookalike import Client, LookalikeClientError  # noqa: E402
from lookalike_server.embedded_milvus.standalone import INSTALL, MilvusStandalone, available  # noqa: E402

VENV_BIN = Path(sys.executable).parent
DIM = 1280
K = 10
SEARCH_COLLECTION = "bench_search"
# What a replica asks Milvus for one query of k=10 on an HNSW collection (pipeline.OVERFETCH and store.py),
# and the ef it uses until its recall calibration has measured the collection (recall.default_effort).
LOOKALIKE_FETCH = max(2 * K, K + 32)
LOOKALIKE_DEFAULT_EF = max(512, 4 * LOOKALIKE_FETCH)


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


# CPU accounting


class CpuSplit:
    """Busy CPU seconds over a phase: this process (the clients), each watched process, everything else."""

    def __init__(self, watched: dict[str, int]) -> None:
        self.watched = watched
        self.result: dict[str, float] = {}

    @staticmethod
    def _proc_s(pid: int) -> float:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            return t.user + t.system + t.children_user + t.children_system
        return 0.0

    def _snapshot(self) -> dict[str, float]:
        machine = psutil.cpu_times()
        own = os.times()
        snap = {
            "wall": time.monotonic(),
            "busy": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
            "clients (this process)": own.user + own.system,
        }
        snap.update({name: self._proc_s(pid) for name, pid in self.watched.items()})
        return snap

    def __enter__(self) -> CpuSplit:
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snapshot()
        delta = {k: end[k] - self._start[k] for k in end}
        wall = delta.pop("wall")
        busy = delta.pop("busy")
        self.result = {"wall_s": round(wall, 1), "cpu_capacity_s": round(wall * cores(), 1)}
        self.result.update({f"{k}_s": round(v, 1) for k, v in delta.items()})
        self.result["other_processes_s"] = round(max(0.0, busy - sum(delta.values())), 1)


# Load generators


def run_threads(n: int, body: Callable[[int], None], limit_s: float) -> int:
    """Runs body(i) in n threads and waits at most limit_s for them; returns how many were still running."""
    threads = [threading.Thread(target=body, args=(i,), name=f"bench-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + limit_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return sum(t.is_alive() for t in threads)


def measure_search(
    make_search: Callable[[], tuple[Callable[[np.ndarray], Any], Callable[[], None]]],
    queries: np.ndarray,
    clients: int,
    warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:
    """Calls per second from `clients` threads, each with its own connection, one query per call.

    make_search() returns (search(vector), close()) for one thread; the first warmup_s are not counted.
    """
    start_at = time.monotonic() + 2.0  # every thread connected before the clock starts
    count_from = start_at + warmup_s
    end_at = count_from + duration_s
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def body(i: int) -> None:
        rng = random.Random(i)
        search, close = make_search()
        try:
            search(queries[0])  # connect
            while time.monotonic() < start_at:
                time.sleep(0.005)
            while (now := time.monotonic()) < end_at:
                try:
                    search(queries[rng.randrange(len(queries))])
                except LookalikeClientError as e:
                    with lock:
                        errors[e.code] += 1
                    continue
                except Exception as e:  # pymilvus raises its own types
                    with lock:
                        errors[type(e).__name__] += 1
                    continue
                done = time.monotonic()
                if now >= count_from and done <= end_at:
                    latencies[i].append(done - now)
        finally:
            close()

    hung = run_threads(clients, body, end_at - time.monotonic() + 120)
    flat = [x for per in latencies for x in per]
    return {
        "qps": round(len(flat) / duration_s, 1),
        "latency_ms": percentiles(flat),
        "errors": dict(errors),
        "threads_still_running": hung,
    }


def measure_ingest(target: str, collection: str, streams: int, vectors: np.ndarray, duration_s: float,
                   prefix: str) -> dict[str, Any]:
    """Vectors per second over `streams` concurrent Ingest streams on one balanced client, first send to last ack.

    Each stream is a generator that stops at the end time. Nothing caps the items in flight but gRPC's flow
    control, as with any user of Client.ingest, so the clients run ahead of the server and the acknowledgements
    go on after the end time (their latency includes that queue).
    """
    client = Client(target, collection=collection, timeout=120)
    client.wait_until_ready(30)
    start_at = time.monotonic() + 1.0
    end_at = start_at + duration_s
    sent = [0] * streams
    acked = [0] * streams
    last_ack = [start_at] * streams
    codes: Counter[str] = Counter()
    ack_latency: list[list[float]] = [[] for _ in range(streams)]
    lock = threading.Lock()

    def body(i: int) -> None:
        sent_at: dict[str, float] = {}

        def items() -> Iterator[tuple[str, np.ndarray]]:
            n = 0
            while time.monotonic() < end_at:
                item_id = f"{prefix}-{i}-{n}"
                sent_at[item_id] = time.monotonic()
                sent[i] += 1
                yield item_id, vectors[(i * 7919 + n) % len(vectors)]
                n += 1

        while time.monotonic() < start_at:
            time.sleep(0.005)
        try:
            for result in client.ingest(items()):
                t = time.monotonic()
                with lock:
                    codes[result.code] += 1
                if result.ok:
                    acked[i] += 1
                    last_ack[i] = t
                    ack_latency[i].append(t - sent_at.pop(result.id, t))
        except LookalikeClientError as e:
            with lock:
                codes[f"stream:{e.code}"] += 1

    try:
        hung = run_threads(streams, body, end_at - time.monotonic() + 180)
    finally:
        client.close()
    total_acked = sum(acked)
    elapsed = max(last_ack) - start_at
    return {
        "vectors_per_s": round(total_acked / elapsed, 1) if elapsed > 0 else None,
        "sent": sum(sent),
        "acknowledged_ok": total_acked,
        "first_send_to_last_ack_s": round(elapsed, 1),
        "result_codes": dict(codes),
        "ack_latency_ms": percentiles([x for per in ack_latency for x in per]),
        "threads_still_running": hung,
    }


# Set-up


def start_replica(name: str, milvus_uri: str, workdir: Path, stack: contextlib.ExitStack) -> tuple[str, int]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    process = stack.enter_context(ManagedProcess(
        [str(VENV_BIN / "lookalike"), "serve", "--address", address, "--milvus-uri", milvus_uri,
         "--data-dir", str(workdir / f"data-{name}"), "--log-level", "WARNING"],
        workdir / f"replica-{name}.log",
    ))
    with Client(address) as client:
        try:
            client.wait_until_ready(120)
        except TimeoutError as e:
            raise RuntimeError(f"{e}\n{process.log_tail()}") from None
    return address, process.pid


def seed(address: str, vectors: np.ndarray, streams: int) -> dict[str, Any]:
    """Ingests the search collection once through one replica, 8 streams of vectors."""
    per_stream = np.array_split(np.arange(len(vectors)), streams)
    failures: Counter[str] = Counter()
    lock = threading.Lock()

    def body(i: int) -> None:
        with Client(address, collection=SEARCH_COLLECTION, timeout=120) as client:
            for result in client.ingest((f"v-{j}", vectors[j]) for j in per_stream[i]):
                if not result.ok:
                    with lock:
                        failures[result.code] += 1

    started = time.monotonic()
    hung = run_threads(streams, body, 900)
    elapsed = time.monotonic() - started
    if hung or failures:
        raise RuntimeError(f"seeding failed: {dict(failures)}, {hung} streams still running")
    return {"vectors": len(vectors), "streams": streams, "seconds": round(elapsed, 1),
            "vectors_per_s": round(len(vectors) / elapsed, 1)}


def wait_indexed(uri: str, collection: str, rows: int, timeout_s: float) -> dict[str, Any]:
    """Flushes the collection and waits until Milvus has indexed every row, so searches hit the HNSW index."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    try:
        started = time.monotonic()
        client.flush(collection)
        info: dict[str, Any] = {}
        while time.monotonic() - started < timeout_s:
            info = client.describe_index(collection, "vector")
            if int(info.get("indexed_rows", 0)) >= rows and int(info.get("pending_index_rows", 0)) == 0:
                break
            time.sleep(1.0)
        return {"describe_index": {k: v for k, v in info.items() if isinstance(v, (str, int, float))},
                "seconds_to_indexed": round(time.monotonic() - started, 1)}
    finally:
        client.close()


def pymilvus_search(uri: str, limit: int, with_vectors: bool, ef: int) -> Callable[
        [], tuple[Callable[[np.ndarray], Any], Callable[[], None]]]:
    def make() -> tuple[Callable[[np.ndarray], Any], Callable[[], None]]:
        from pymilvus import MilvusClient

        client = MilvusClient(uri)
        fields = ["id", "vector"] if with_vectors else ["id"]

        def search(vector: np.ndarray) -> Any:
            return client.search(SEARCH_COLLECTION, data=[vector.tolist()], limit=limit, output_fields=fields,
                                 search_params={"params": {"ef": max(ef, limit)}}, consistency_level="Session")

        return search, client.close

    return make


def lookalike_search(target: str) -> Callable[[], tuple[Callable[[np.ndarray], Any], Callable[[], None]]]:
    def make() -> tuple[Callable[[np.ndarray], Any], Callable[[], None]]:
        client = Client(target, collection=SEARCH_COLLECTION, timeout=60)
        return (lambda vector: client.search(vector, k=K)), client.close

    return make


def sanity(target: str, vectors: np.ndarray) -> dict[str, Any]:
    """Stored vectors searched through the target find themselves first (each replica answers correctly)."""
    with Client(target, collection=SEARCH_COLLECTION) as client:
        picks = random.Random(1).sample(range(len(vectors)), 20)
        found = sum(client.search(vectors[j], k=K)[0].id == f"v-{j}" for j in picks)
    return {"queries": len(picks), "self_found_first": found}


def calibrations(address: str, collection: str) -> list[dict[str, Any]] | str:
    """The recall calibration a replica reports for a collection (the ef it searches with), if any."""
    import grpc

    from lookalike.v1 import lookalike_pb2 as pb
    from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        info = pb_grpc.CollectionsStub(channel).DescribeCollection(pb.DescribeCollectionRequest(name=collection),
                                                                    timeout=30)
    measured = [
        {"k": c.k, "ef": c.effort, "recall": round(c.recall, 3), "target": round(c.target, 3), "rows": c.rows,
         "exact_fallback": c.exact_fallback}
        for c in getattr(info, "calibrations", ())
    ]
    return measured or f"not calibrated yet: searches used the default effort, ef {LOOKALIKE_DEFAULT_EF}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not available():
        raise SystemExit(f"the Milvus standalone server is missing: {INSTALL}")
    result: dict[str, Any] = {
        "benchmark": "replicas",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "server_package": installed_server(),
        "settings": {
            "collection": {"vectors": args.vectors, "dimension": DIM, "metric": "cosine", "index": "HNSW",
                           "min_recall": args.min_recall or "the server's default"},
            "search": {"client_threads": args.clients, "k": K, "queries_per_call": 1, "query": "random unit vector",
                       "warmup_s": args.warmup, "measured_s": args.duration},
            "ingest": {"streams": args.streams, "clients": "one balanced lookalike.Client for all streams",
                       "in_flight": "uncapped: gRPC flow control only, as Client.ingest does",
                       "item": f"a random unit {DIM}-d vector", "sending_s": args.duration,
                       "throughput": "acknowledged OK / (last acknowledgement - first send)"},
            "milvus": "standalone 2.3.5 (PyPI milvus), one server, Session consistency as the replicas use",
            "pymilvus_plain": {"limit": K, "output_fields": ["id"], "ef": 64},
            "pymilvus_like_replica": {"limit": LOOKALIKE_FETCH, "output_fields": ["id", "vector"],
                                      "ef": LOOKALIKE_DEFAULT_EF},
            "replica_flags": "--milvus-uri <the standalone> --log-level WARNING, defaults otherwise",
        },
    }
    queries = unit_vectors(1000, seed=2)
    stored = unit_vectors(args.vectors, seed=1)
    ingest_pool = unit_vectors(2000, seed=3)
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lookalike-bench-replicas-") as tmp:
        workdir = Path(tmp)
        milvus = MilvusStandalone(workdir / "milvus")
        log("starting Milvus standalone")
        uri = milvus.start()
        stack.callback(milvus.stop)
        log(f"Milvus standalone at {uri} in {milvus.start_seconds:.1f} s; starting two replicas")
        address_a, pid_a = start_replica("a", uri, workdir, stack)
        address_b, pid_b = start_replica("b", uri, workdir, stack)
        both = f"{address_a},{address_b}"
        watched = {"replica_a": pid_a, "replica_b": pid_b, "milvus": milvus.server_pid or 0}

        with Client(address_a) as client:
            client.create_collection(SEARCH_COLLECTION, "cosine", "HNSW", min_recall=args.min_recall)
        log(f"seeding {args.vectors} vectors through replica A")
        result["seed_ingest_1_replica"] = seed(address_a, stored, args.streams)
        log(f"seeded: {result['seed_ingest_1_replica']}; waiting for the index")
        result["index"] = wait_indexed(uri, SEARCH_COLLECTION, args.vectors, 300)
        result["sanity"] = {"replica_a": sanity(address_a, stored), "replica_b": sanity(address_b, stored)}
        time.sleep(3)

        phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("pymilvus_plain", lambda: measure_search(
                pymilvus_search(uri, K, False, 64), queries, args.clients, args.warmup, args.duration)),
            ("pymilvus_like_replica", lambda: measure_search(
                pymilvus_search(uri, LOOKALIKE_FETCH, True, LOOKALIKE_DEFAULT_EF), queries, args.clients,
                args.warmup, args.duration)),
            ("search_1_replica", lambda: measure_search(
                lookalike_search(address_a), queries, args.clients, args.warmup, args.duration)),
            ("search_2_replicas", lambda: measure_search(
                lookalike_search(both), queries, args.clients, args.warmup, args.duration)),
        ]
        for name, target in (("ingest_1_replica", address_a), ("ingest_2_replicas", both)):
            def ingest_phase(name: str = name, target: str = target) -> dict[str, Any]:
                with Client(address_a) as client:
                    client.create_collection(name, "cosine", "HNSW")
                try:
                    return measure_ingest(target, name, args.streams, ingest_pool, args.duration, name)
                finally:
                    with Client(address_a) as client:
                        with contextlib.suppress(LookalikeClientError):
                            result.setdefault("ingest_rows_stored", {})[name] = client.describe_collection(
                                name).row_count
                        client.drop_collection(name)
            phases.append((name, ingest_phase))

        for name, phase in phases:
            log(f"phase {name}")
            with CpuSplit(watched) as cpu:
                figures = phase()
            figures["cpu"] = cpu.result
            result[name] = figures
            log(f"{name}: {json.dumps({k: v for k, v in figures.items() if k != 'cpu'})}")
            if name.startswith("search_"):
                figures["calibrations_after"] = {
                    "replica_a": calibrations(address_a, SEARCH_COLLECTION),
                    "replica_b": calibrations(address_b, SEARCH_COLLECTION),
                }
            time.sleep(3)  # let Milvus settle between phases

        for name, pid in (("replica_a", pid_a), ("replica_b", pid_b)):
            with contextlib.suppress(psutil.NoSuchProcess):
                result.setdefault("replica_rss_mib_at_end", {})[name] = round(
                    psutil.Process(pid).memory_info().rss / 2**20, 1)

    search_1 = result["search_1_replica"]["qps"]
    search_2 = result["search_2_replicas"]["qps"]
    result["ratios"] = {
        "search_qps_2_over_1_replica": ratio(search_2, search_1),
        "ingest_2_over_1_replica": ratio(result["ingest_2_replicas"]["vectors_per_s"],
                                         result["ingest_1_replica"]["vectors_per_s"]),
        "search_qps_1_replica_over_pymilvus_plain": ratio(search_1, result["pymilvus_plain"]["qps"]),
        "search_qps_1_replica_over_pymilvus_like_replica": ratio(search_1, result["pymilvus_like_replica"]["qps"]),
    }
    n_cores = result["machine"]["cores"]
    result["honest_note"] = (
        f"This machine has {n_cores} cores shared by Milvus, both replicas and the {args.clients} client threads "
        "(one Python process, one GIL), and by whatever else ran on the machine (see each phase's cpu and the "
        "load average). A second replica cannot add CPU here, so the 2/1 ratios mostly show the overhead of a "
        "second process and of balancing, not scaling; the cpu fields show where the time went. The scaling "
        "figure (1 vs 4 replicas) needs a machine with cores to spare, e.g. the 16-core GPU machine."
        if n_cores <= 4 else
        f"{n_cores} cores: the replicas had cores to spare, so the 2/1 ratios show scaling."
    ) + (
        " Random unit vectors are the hardest data for HNSW: a replica holds every search to its recall target "
        "(calibrated per replica, in the background, see calibrations_after), so it may search with a far "
        "higher ef than the pymilvus references, or fall back to exact scans; the lookalike/pymilvus ratios "
        "include that cost."
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=20_000, help="rows in the search collection")
    parser.add_argument("--clients", type=int, default=32, help="concurrent search threads")
    parser.add_argument("--streams", type=int, default=8, help="concurrent Ingest streams")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of search before measuring")
    parser.add_argument("--min-recall", type=float, default=0.0,
                        help="the search collection's recall target (0: the server's default)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="the whole run stops after this many seconds")
    parser.add_argument("--write", action="store_true", help="also save bench/results/replicas.json")
    args = parser.parse_args(argv)
    with time_limit(args.timeout):
        result = run(args)
    emit(result, "replicas", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
