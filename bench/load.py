"""Load: Search under a 16-stream ingest, with the Search latency target on and off, against `lookalike serve`.

For each setting of `--search-p99-target-ms` (the --target-ms given, then 0: off), one server (a fresh data
folder in a temp dir, loopback only; by default the Milvus standalone server as its child) runs four phases:
  solo:  16 concurrent Ingest streams alone (searchers off): ingest images/s alone;
  idle:  the searchers alone, on the rows the solo phase stored, once the recall calibration that the solo
         phase's end starts has finished: Search p50/p99 idle;
  load:  both at once for --minutes (or --off-minutes with the target off): Search p50/p99 and ingest
         images/s under load, and the server's RSS growth from --warmup-s into the load to its end;
and then the drain: every item sent must be acknowledged and stored (sent = acknowledged = row count).
  Ingest streams: each its own lookalike.Client, a generator of JPEG bytes under unique ids; the JPEGs are made
     once (bench/common.make_photos, cached on disk) from scikit-image's photos with random rescaling, crops and
     flips, so they differ, and none is sent twice while the folder lasts.
  Searchers: threads of a second process (not of the one feeding the collection), each its own
     lookalike.Client, k=10, half by vector (a photo's embedding plus a little noise) and
     half by the id of an image already acknowledged; together --search-rate searches/s (default 100), each on
     a fixed schedule, as a service calling Search all day (latency counts from when a search was due).
     --search-rate 0 makes them a closed loop (each as fast as its answers come), which measures saturation:
     searches then take whatever CPU ingest leaves, so yielding buys them throughput, not latency.
The server's own metrics (--metrics-port) are scraped around each phase: where a search's time went (stages:
query vectors, the search batcher's queue, the Milvus call, ranking; the event loop's lag; Milvus call times),
and the bulk share the latency target left to ingest, sampled every 5 s (with the times the server called the
target unreachable: searches over it with ingest at its floor); so are the embedded standalone's own
(milvus_stages: a search or query at Milvus' proxy, and in its query node the wait for the time tick that makes
earlier writes visible, the task queue, and the scans of growing and sealed segments).

Run (after `make setup`; the committed figures: --minutes 5 --off-minutes 3, about 14 minutes in all):
    .venv/bin/python bench/load.py [--minutes 5] [--off-minutes 3] [--write]
--write also saves the JSON to bench/results/load.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import server_metrics  # noqa: E402
from common import (  # noqa: E402
    CpuMeter,
    ManagedProcess,
    emit,
    free_port,
    installed_server,
    log,
    machine_info,
    make_photos,
    percentiles,
    time_limit,
)

from lookalike import ById, Client, LookalikeClientError  # noqa: E402

VENV_BIN = Path(sys.executable).parent
COLLECTION = "load"
K = 10
# The searchers' process is started this long before its phase begins (a new interpreter's imports and clients).
SEARCH_PROCESS_START_S = 8.0
SEARCH_DEADLINE_S = 60.0
RSS_GROWTH_LIMIT_PCT = 10.0
# The targets: Search p99 under load at most this many times its idle p99, ingest under load at least
# this share of its solo rate.
P99_LOAD_OVER_IDLE_MAX = 10.0
INGEST_LOAD_OVER_SOLO_MIN = 0.5
# The only status a healthy server may answer under load: its own configured overload, with a hint to retry.
ALLOWED_ERRORS = {"RESOURCE_EXHAUSTED"}


def vm_rss_mib(pid: int) -> float | None:
    """VmRSS of one process, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def children_rss_mib(pid: int) -> float:
    """RSS of the server's child processes: the embedded Milvus, if it runs as a child."""
    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
    return round(total / 2**20, 1)


class Tally:
    """Everything the load threads count, behind one lock."""

    def __init__(self, start: float, bucket_s: float, acked_ids: list[str], abort: threading.Event) -> None:
        self.lock = threading.Lock()
        self.start = start
        self.bucket_s = bucket_s
        self.sent = 0
        self.acked_ok = 0
        self.item_codes: Counter[str] = Counter()
        self.stream_errors: Counter[str] = Counter()
        self.search_ok = 0
        self.search_errors: Counter[str] = Counter()
        self.search_by: Counter[str] = Counter()
        self.by_id_self_not_first = 0
        self.search_latency: list[float] = []
        self.ack_latency: list[float] = []
        self.acked_ids = acked_ids  # shared by the phases: searchers by id pick from every earlier phase
        self.timeline: dict[int, Counter[str]] = {}
        self.bucket_latency: dict[int, list[float]] = {}  # searches by the bucket they were due in
        self.last_ack = start
        self.error_samples: dict[str, str] = {}
        self.abort = abort  # set when this process grows past --max-client-rss-gib

    def bucket(self, t: float, what: str) -> None:
        self.timeline.setdefault(self.bucket_of(t), Counter())[what] += 1

    def bucket_of(self, t: float) -> int:
        return int((t - self.start) // self.bucket_s)

    def error(self, where: Counter[str], code: str, message: str) -> None:
        with self.lock:
            where[code] += 1
            self.error_samples.setdefault(code, message[:300])


def ingest_stream(i: int, streams: int, address: str, photos: list[Path], end_at: float, tally: Tally,
                  counters: list[int]) -> None:
    """One Ingest stream of unique ids until end_at; a broken stream is opened again until then.

    Stream i sends photos i, i + streams, i + 2 * streams... (read from disk as it goes), so no photo is sent
    twice unless the run outlasts the folder; counters[i] carries its place from one phase to the next.
    """
    sent_at: dict[str, float] = {}
    n = counters[i]

    def items() -> Iterator[tuple[str, bytes, dict[str, Any]]]:
        nonlocal n
        while (now := time.monotonic()) < end_at and not tally.abort.is_set():
            item_id = f"s{i:02d}-{n:06d}"
            n += 1
            counters[i] = n
            sent_at[item_id] = now
            with tally.lock:
                tally.sent += 1
            yield item_id, photos[(i + streams * (n - 1)) % len(photos)].read_bytes(), {"stream": i}

    with Client(address, collection=COLLECTION, timeout=120) as client:
        while time.monotonic() < end_at and not tally.abort.is_set():
            try:
                for result in client.ingest(items()):
                    t = time.monotonic()
                    latency = t - sent_at.pop(result.id, t)
                    with tally.lock:
                        tally.item_codes[result.code] += 1
                        if result.ok:
                            tally.acked_ok += 1
                            tally.acked_ids.append(result.id)
                            tally.ack_latency.append(latency)
                            tally.last_ack = max(tally.last_ack, t)
                            tally.bucket(t, "acknowledged")
                        else:
                            tally.error_samples.setdefault(result.code, result.message[:300])
            except LookalikeClientError as e:
                tally.error(tally.stream_errors, e.code, e.details)
                time.sleep(0.5)


def searcher(i: int, address: str, queries: np.ndarray, end_at: float, tally: Tally, interval_s: float) -> None:
    """Searches k=10 until end_at, alternating by vector and by an acknowledged id: one search every interval_s
    on a fixed schedule (0: the next as soon as the last answers). On a schedule, a search's latency counts from
    when it was due, so a slow answer that holds the next one back is charged to the server, not hidden."""
    rng = random.Random(2000 + i)
    noise = np.random.default_rng(i)
    due = max(time.monotonic(), tally.start) + rng.random() * interval_s  # the searchers' schedules interleave
    with Client(address, collection=COLLECTION, timeout=SEARCH_DEADLINE_S) as client:
        if not interval_s:
            time.sleep(max(0.0, tally.start - time.monotonic()))
        while not tally.abort.is_set():
            if interval_s:
                if due >= end_at:
                    return
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                started = due
                due += interval_s
            elif (started := time.monotonic()) >= end_at:
                return
            by_id = rng.random() < 0.5 and bool(tally.acked_ids)
            if by_id:
                wanted = tally.acked_ids[rng.randrange(len(tally.acked_ids))]
                query: Any = ById(wanted)
            else:
                vector = queries[rng.randrange(len(queries))] + noise.normal(0, 0.01, queries.shape[1])
                query = vector.astype(np.float32)
            try:
                hits = client.search(query, k=K)
            except LookalikeClientError as e:
                tally.error(tally.search_errors, e.code, e.details)
                if not interval_s:
                    time.sleep(0.05)
                continue
            t = time.monotonic()
            with tally.lock:
                tally.search_ok += 1
                tally.search_by["id" if by_id else "vector"] += 1
                tally.search_latency.append(t - started)
                tally.bucket_latency.setdefault(tally.bucket_of(started), []).append(t - started)
                tally.bucket(t, "searches")
                # The same photo is stored under many ids, so an exact tie may rank another id first.
                if by_id and (not hits or hits[0].score < 0.999):
                    tally.by_id_self_not_first += 1


def _bucket_percentiles(latencies_s: list[float] | None) -> dict[str, float]:
    """A timeline bucket's search p50/p99 (ms), when searches were due in it."""
    if not latencies_s:
        return {}
    figures = percentiles(latencies_s)
    return {"search_p50_ms": figures["p50"], "search_p99_ms": figures["p99"]}


def search_process(start: float, end_at: float, bucket_s: float, address: str, queries: np.ndarray, searchers: int,
                   interval_s: float, ids: Any, results: Any) -> None:
    """A phase's searchers, in a process of their own: the clients of a service are not threads of the process
    that feeds its collections (here, one interpreter lock beside 16 Ingest streams delayed the searchers'
    own threads). Ids acknowledged meanwhile arrive on `ids` (None: no more); the figures go back on `results`."""
    acked: list[str] = []
    tally = Tally(start, bucket_s, acked, threading.Event())

    def feed() -> None:
        while (chunk := ids.get()) is not None:
            acked.extend(chunk)

    threading.Thread(target=feed, daemon=True).start()
    threads = [threading.Thread(target=searcher, args=(i, address, queries, end_at, tally, interval_s), daemon=True)
               for i in range(searchers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with tally.lock:
        results.put({"ok": tally.search_ok, "errors": tally.search_errors, "by": tally.search_by,
                     "by_id_self_not_first": tally.by_id_self_not_first, "latency": tally.search_latency,
                     "timeline": {b: c["searches"] for b, c in tally.timeline.items()},
                     "bucket_latency": tally.bucket_latency,
                     "error_samples": tally.error_samples})


class SearchProcess:
    """Runs search_process beside this one, passes it the ids acknowledged here, and adds its figures to the
    phase's Tally once it ends."""

    def __init__(self, phase: Phase, ctx: dict[str, Any], tally: Tally, end_at: float) -> None:
        spawn = multiprocessing.get_context("spawn")  # no fork of a process holding gRPC channels
        self.ids, self.results = spawn.Queue(), spawn.Queue()
        self.tally = tally
        self.sent = 0
        self.stop = threading.Event()
        self.process = spawn.Process(
            target=search_process, name="searchers", daemon=True,
            args=(tally.start, end_at, tally.bucket_s, ctx["address"], ctx["queries"], phase.searchers,
                  ctx["search_interval_s"], self.ids, self.results))
        self.sender = threading.Thread(target=self._send, daemon=True)

    def start(self) -> None:
        self._send_new()
        self.process.start()
        self.sender.start()

    def _send_new(self) -> None:
        with self.tally.lock:
            new = self.tally.acked_ids[self.sent :]
            self.sent += len(new)
        if new:
            self.ids.put(new)

    def _send(self) -> None:
        while not self.stop.wait(0.2):
            self._send_new()

    def join(self, timeout_s: float) -> None:
        figures = self.results.get(timeout=max(1.0, timeout_s))
        self.stop.set()
        self.sender.join(5)
        self.ids.put(None)
        self.process.join(30)
        tally = self.tally
        with tally.lock:
            tally.search_ok += figures["ok"]
            tally.search_errors.update(figures["errors"])
            tally.search_by.update(figures["by"])
            tally.by_id_self_not_first += figures["by_id_self_not_first"]
            tally.search_latency.extend(figures["latency"])
            for bucket, count in figures["timeline"].items():
                tally.timeline.setdefault(bucket, Counter())["searches"] += count
            for bucket, latencies in figures["bucket_latency"].items():
                tally.bucket_latency.setdefault(bucket, []).extend(latencies)
            for code, message in figures["error_samples"].items():
                tally.error_samples.setdefault(code, message)


class Phase:
    """One phase's load threads (ingest streams and/or searchers) until its end time, with the server's metrics
    scraped around it."""

    def __init__(self, name: str, seconds: float, streams: int, searchers: int) -> None:
        self.name, self.seconds, self.streams, self.searchers = name, seconds, streams, searchers


def run_phase(phase: Phase, ctx: dict[str, Any], on_sample: Any = None) -> dict[str, Any]:
    """Runs one phase; returns its figures (and leaves its Tally in ctx['tallies'])."""
    args, address, pid, port = ctx["args"], ctx["address"], ctx["pid"], ctx["metrics_port"]
    start = time.monotonic() + (SEARCH_PROCESS_START_S if phase.searchers else 0.0)
    end_at = start + phase.seconds
    tally = Tally(start, args.bucket_s, ctx["acked_ids"], ctx["abort"])
    ctx["tallies"].append(tally)
    searchers = SearchProcess(phase, ctx, tally, end_at) if phase.searchers else None
    if searchers is not None:
        searchers.start()  # it imports and connects before the phase begins
    time.sleep(max(0.0, start - time.monotonic()))
    milvus_port = ctx.get("milvus_metrics_port")
    before = server_metrics.scrape(port)
    milvus_before = server_metrics.scrape(milvus_port, server_metrics.MILVUS) if milvus_port else {}
    shares: list[tuple[float, float | None]] = []
    unreachable_at: list[float] = []  # samples that found lookalike_search_target_unreachable at 1
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(5.0):
            sampled = server_metrics.gauges(port, "lookalike_ingest_bulk_share", "lookalike_search_target_unreachable")
            shares.append((round(time.monotonic() - start, 1), sampled["lookalike_ingest_bulk_share"]))
            if sampled["lookalike_search_target_unreachable"]:
                unreachable_at.append(shares[-1][0])
            if on_sample is not None:
                on_sample(time.monotonic() - start, tally)

    threads = [
        threading.Thread(target=ingest_stream,
                         args=(i, phase.streams, address, ctx["photos"], end_at, tally, ctx["counters"]), daemon=True)
        for i in range(phase.streams)
    ]
    sampler = threading.Thread(target=sample, daemon=True)
    log(f"{ctx['label']}: phase {phase.name} for {phase.seconds:.0f} s ({phase.streams} streams, "
        f"{phase.searchers} searchers)")
    with CpuMeter(watched_pid=pid, tree=True) as cpu:
        sampler.start()
        for t in threads:
            t.start()
        drain_deadline = end_at + args.drain_s
        for t in threads:
            t.join(max(0.0, drain_deadline - time.monotonic()))
        if searchers is not None:
            searchers.join(drain_deadline - time.monotonic())
    stop_sampling.set()
    sampler.join(10)
    after = server_metrics.scrape(port)
    milvus_after = server_metrics.scrape(milvus_port, server_metrics.MILVUS) if milvus_port else {}
    with tally.lock:
        span = tally.last_ack - start
        return {
            "seconds": phase.seconds,
            "ingest_streams": phase.streams,
            "searchers": phase.searchers,
            "search_ms": percentiles(tally.search_latency),
            "ingest_acknowledgement_ms": percentiles(tally.ack_latency),
            "images_per_s": round(tally.acked_ok / span, 1) if phase.streams and span > 0 else None,
            "searches_per_s": round(tally.search_ok / phase.seconds, 1) if phase.searchers else None,
            "sent": tally.sent,
            "acknowledged_ok": tally.acked_ok,
            "last_ack_after_end_s": round(tally.last_ack - end_at, 1) if phase.streams else None,
            "threads_still_running_after_drain": sum(t.is_alive() for t in threads),
            "server_stages": server_metrics.between(before, after),
            "milvus_stages": server_metrics.between(milvus_before, milvus_after, server_metrics.MILVUS_UNIT_S),
            "bulk_share_every_5s": shares,
            "target_unreachable_at_s": unreachable_at,
            "cpu_s": cpu.result,
            f"per_{args.bucket_s:.0f}s": [{"t_s": b * args.bucket_s, **tally.timeline.get(b, {}),
                                           **_bucket_percentiles(tally.bucket_latency.get(b))}
                                          for b in sorted(tally.timeline.keys() | tally.bucket_latency.keys())],
        }


def wait_for_calibration(port: int, count_before: float, timeout_s: float) -> float | None:
    """The last Ingest stream's end starts a recall calibration (a scan and hundreds of searches): the idle
    phase waits for it to finish, so that idle means idle. Seconds waited, or None if none finished in time."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        done = server_metrics.histogram_count(port, "lookalike_recall_calibration_seconds") > count_before
        if done and not server_metrics.gauge(port, "lookalike_recall_calibrations_running"):
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def milvus_metrics_port(data_dir: Path) -> int | None:
    """The metrics port of the embedded Milvus standalone in the server's data directory (None: another store)."""
    ports = data_dir / "milvus-standalone" / "milvus-ports.json"
    return json.loads(ports.read_text()).get("metrics_port") if ports.exists() else None


def run_server(args: argparse.Namespace, photos: list[Path], target_ms: float, load_minutes: float) -> dict[str, Any]:
    """One server with this latency target, through the solo, idle and load phases and the drain."""
    label = f"target {target_ms:g} ms" if target_ms else "target off"
    result: dict[str, Any] = {"search_p99_target_ms": target_ms}
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-load-") as tmp:
        workdir = Path(tmp)
        address = f"127.0.0.1:{free_port()}"
        metrics_port = free_port()
        server = ManagedProcess(
            [str(VENV_BIN / "lookalike"), "serve", "--address", address, "--data-dir", str(workdir / "data"),
             "--milvus-embedded", args.milvus_embedded, "--metrics-port", str(metrics_port),
             "--search-p99-target-ms", str(target_ms)],
            workdir / "serve.log",
        )
        with server:
            pid = server.pid
            with Client(address, collection=COLLECTION) as client:
                try:
                    client.wait_until_ready(180)
                except TimeoutError as e:
                    raise RuntimeError(f"{e}\n{server.log_tail()}") from None
                client.create_collection(COLLECTION, "cosine", "HNSW", min_recall=args.min_recall)
                queries = client.embed([p.read_bytes() for p in photos[:16]])
            ctx = {"args": args, "address": address, "pid": pid, "metrics_port": metrics_port, "photos": photos,
                   "queries": queries, "acked_ids": [], "counters": [0] * args.streams, "abort": threading.Event(),
                   "tallies": [], "label": label, "milvus_metrics_port": milvus_metrics_port(workdir / "data"),
                   "search_interval_s": args.searchers / args.search_rate if args.search_rate else 0.0}
            rss: dict[str, Any] = {"start_mib": vm_rss_mib(pid)}
            phases: dict[str, Any] = {}
            calibrations = server_metrics.histogram_count(metrics_port, "lookalike_recall_calibration_seconds")
            phases["solo"] = run_phase(Phase("solo", args.solo_s, args.streams, 0), ctx)
            result["calibration_before_idle_s"] = wait_for_calibration(metrics_port, calibrations,
                                                                       args.calibration_wait_s)
            time.sleep(args.settle_s)  # the solo phase's flush and index build run meanwhile
            phases["idle"] = run_phase(Phase("idle", args.idle_s, 0, args.searchers), ctx)
            samples: list[tuple[float, float | None, float | None, float]] = []

            def sample_rss(t: float, tally: Tally) -> None:
                value, own = vm_rss_mib(pid), vm_rss_mib(os.getpid())
                samples.append((round(t, 1), value, own, children_rss_mib(pid)))
                if own and own > args.max_client_rss_gib * 1024 and not ctx["abort"].is_set():
                    result["aborted"] = f"the clients' process grew to {own:.0f} MiB after {t:.0f} s"
                    ctx["abort"].set()
                if "after_warmup_mib" not in rss and t >= args.warmup_s:
                    rss["after_warmup_mib"], rss["milvus_child_after_warmup_mib"] = value, samples[-1][3]
                if t <= load_minutes * 60:
                    rss["end_of_load_mib"], rss["milvus_child_end_of_load_mib"] = value, samples[-1][3]

            phases["load"] = run_phase(Phase("load", load_minutes * 60, args.streams, args.searchers), ctx,
                                       sample_rss)
            with Client(address, collection=COLLECTION) as client:
                stored = client.describe_collection(COLLECTION).row_count
            stop_started = time.monotonic()
            exit_code = server.stop()
            stop_s = time.monotonic() - stop_started
        log_text = server.log_path.read_text(errors="replace")
    tallies = ctx["tallies"]
    warm, end = rss.get("after_warmup_mib"), rss.get("end_of_load_mib")
    rss["growth_after_warmup_pct"] = round(100.0 * (end - warm) / warm, 1) if warm and end else None
    rss["samples_every_5s"] = {"columns": ["t_s", "server_mib", "clients_process_mib", "milvus_child_mib"],
                               "rows": samples}
    errors = {
        "ingest_items": dict(sum((Counter({c: n for c, n in t.item_codes.items() if c != "OK"}) for t in tallies),
                                 Counter())),
        "ingest_streams": dict(sum((t.stream_errors for t in tallies), Counter())),
        "search": dict(sum((t.search_errors for t in tallies), Counter())),
    }
    sent, acked = sum(t.sent for t in tallies), sum(t.acked_ok for t in tallies)
    idle, load, solo = phases["idle"]["search_ms"], phases["load"]["search_ms"], phases["solo"]["images_per_s"]
    p99_ratio = round(load["p99"] / idle["p99"], 2) if load["p99"] and idle["p99"] else None
    ingest_ratio = round(phases["load"]["images_per_s"] / solo, 2) if solo and phases["load"]["images_per_s"] else None
    result.update({
        "summary": {
            "search_idle_p50_ms": idle["p50"], "search_idle_p99_ms": idle["p99"],
            "search_load_p50_ms": load["p50"], "search_load_p99_ms": load["p99"],
            "search_p99_load_over_idle": p99_ratio,
            "ingest_solo_images_per_s": solo, "ingest_load_images_per_s": phases["load"]["images_per_s"],
            "ingest_load_over_solo": ingest_ratio,
            "searches_per_s_idle": phases["idle"]["searches_per_s"],
            "searches_per_s_load": phases["load"]["searches_per_s"],
            "rss_growth_after_warmup_pct": rss["growth_after_warmup_pct"],
        },
        "items": {"sent": sent, "acknowledged_ok": acked, "stored_row_count": stored,
                  "equal": sent == acked == stored, "distinct_images_sent": min(sent, len(photos))},
        "errors_by_status": errors,
        "error_samples": {k: v for t in tallies for k, v in t.error_samples.items()},
        "phases": phases,
        "server_rss": rss,
        "server_stop": {"exit_code": exit_code, "seconds": round(stop_s, 1)},
        "server_log": {
            "lines": log_text.count("\n"),
            "error_lines": sum(" ERROR " in line or "Traceback" in line for line in log_text.splitlines()),
            "warning_lines": sum(" WARNING " in line for line in log_text.splitlines()),
            "tail": log_text.splitlines()[-5:],
        },
    })
    error_codes = {c for group in errors.values() for c in group}
    result["pass"] = {
        f"search_p99_under_load_at_most_{P99_LOAD_OVER_IDLE_MAX:g}x_idle": p99_ratio is not None
        and p99_ratio <= P99_LOAD_OVER_IDLE_MAX,
        **({"search_p99_under_load_under_the_target": bool(load["p99"] and load["p99"] <= target_ms)}
           if target_ms else {}),
        f"ingest_under_load_at_least_{INGEST_LOAD_OVER_SOLO_MIN:g}x_solo": ingest_ratio is not None
        and ingest_ratio >= INGEST_LOAD_OVER_SOLO_MIN,
        f"rss_growth_after_warmup_at_most_{RSS_GROWTH_LIMIT_PCT:.0f}_pct": rss["growth_after_warmup_pct"] is not None
        and rss["growth_after_warmup_pct"] <= RSS_GROWTH_LIMIT_PCT,
        "no_errors_but_configured_overload": error_codes <= ALLOWED_ERRORS,
        "sent_equals_acknowledged_equals_stored": result["items"]["equal"],
        "no_hung_threads": all(p["threads_still_running_after_drain"] == 0 for p in phases.values()),
        "ran_the_full_time": "aborted" not in result,
    }
    result["passed"] = all(result["pass"].values())
    log(f"{label}: {json.dumps(result['summary'])}")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "load",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "server_package": installed_server(),
        "settings": {
            "target_on_load_minutes": args.minutes, "target_off_load_minutes": args.off_minutes,
            "solo_s": args.solo_s, "idle_s": args.idle_s, "settle_s": args.settle_s, "warmup_s": args.warmup_s,
            "calibration_wait_s": args.calibration_wait_s,
            "ingest_streams": args.streams, "searchers": args.searchers, "k": K,
            "search_rate_per_s": args.search_rate or "closed loop (each searcher as fast as answers come)",
            "search_latency_from": "when the search was due on its searcher's fixed schedule" if args.search_rate
                                   else "when the searcher sent it",
            "min_recall": args.min_recall or "the server's default", "distinct_photos": args.photos,
            "photo": "640x480 JPEG q90 from skimage.data, random rescale/crop/flip (bench/common.make_photos)",
            "search_mix": "half by vector (a photo embedding + N(0, 0.01) noise), half by an acknowledged id",
            "idle": "the same searchers with no ingest, on the rows of the solo phase, once the recall calibration "
                    "that the solo phase's end started has finished (calibration_before_idle_s)",
            "server": f"lookalike serve --data-dir <temp> --milvus-embedded {args.milvus_embedded} --metrics-port P "
                      f"--search-p99-target-ms T, defaults otherwise; one collection {COLLECTION!r} (cosine, HNSW)",
            "rss_measured": "VmRSS of the lookalike server process alone, from warmup_s into the load phase to its "
                            "end; the embedded Milvus child is reported beside it (milvus_child_*)",
            "latencies": "search_ms and ingest_acknowledgement_ms as the clients saw them (the Ingest streams are "
                         "threads of this process, the searchers of a second one, on the same 2 cores as the "
                         "server); server_stages as the "
                         "server measured them (bucket-interpolated p50/p99); milvus_stages as the embedded "
                         "standalone measured them (its buckets are powers of 2 in ms, so p50/p99 are coarse)",
            "configured_overload": "RESOURCE_EXHAUSTED from the server's own limits is allowed, any other error "
                                   "fails the run",
            "client_deadline_s": {"search": SEARCH_DEADLINE_S, "ingest_stream": "none"},
        },
    }
    photos = make_photos(Path(args.photo_dir), args.photos)
    runs = {"target_on": run_server(args, photos, args.target_ms, args.minutes)}
    if args.off_minutes > 0:
        runs["target_off"] = run_server(args, photos, 0.0, args.off_minutes)
    result["runs"] = runs
    result["passed"] = runs["target_on"]["passed"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="the load phase with the target on")
    parser.add_argument("--off-minutes", type=float, default=3.0,
                        help="the load phase of a second server with the target off (0: no such run)")
    parser.add_argument("--target-ms", type=float, default=100.0, help="--search-p99-target-ms of the first server")
    parser.add_argument("--solo-s", type=float, default=45.0, help="ingest alone, before the searchers")
    parser.add_argument("--idle-s", type=float, default=30.0, help="searchers alone, before the load")
    parser.add_argument("--settle-s", type=float, default=10.0,
                        help="pause between the solo and idle phases, after the recall calibration the solo "
                             "phase's end starts")
    parser.add_argument("--calibration-wait-s", type=float, default=180.0,
                        help="longest wait for that calibration before the idle phase")
    parser.add_argument("--milvus-embedded", default="standalone", choices=["lite", "lite-server", "standalone"],
                        help="the embedded Milvus (default standalone, the server's own default store)")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="RSS growth is measured from this far into the load phase")
    parser.add_argument("--streams", type=int, default=16, help="concurrent Ingest streams")
    parser.add_argument("--searchers", type=int, default=32, help="concurrent searchers")
    parser.add_argument("--search-rate", type=float, default=100.0,
                        help="searches per second, all searchers together, each on a fixed schedule (0: closed "
                             "loop, every searcher as fast as its answers come: searches then take whatever CPU "
                             "ingest leaves, so no latency target can be met by yielding)")
    parser.add_argument("--photos", type=int, default=32768,
                        help="distinct JPEGs made once (cached on disk, about 60 KB each) and sent in turn")
    parser.add_argument("--photo-dir", default=str(Path(tempfile.gettempdir()) / "lookalike-load-photos"),
                        help="where the photos are made (reused while the recipe holds)")
    parser.add_argument("--drain-s", type=float, default=300.0,
                        help="after a phase's end, how long to wait for outstanding acknowledgements")
    parser.add_argument("--min-recall", type=float, default=0.0,
                        help="the collection's recall target (0: the server's default)")
    parser.add_argument("--max-client-rss-gib", type=float, default=6.0,
                        help="stop the load early if this process grows past it (items queued unacknowledged)")
    parser.add_argument("--bucket-s", type=float, default=30.0, help="throughput timeline interval")
    parser.add_argument("--write", action="store_true", help="also save bench/results/load.json")
    args = parser.parse_args(argv)
    total_s = (args.minutes + args.off_minutes) * 60 + 2 * (args.solo_s + args.idle_s + args.settle_s
                                                                    + args.calibration_wait_s)
    with time_limit(total_s + 3 * args.drain_s + 900):
        result = run(args)
    emit(result, "load", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
