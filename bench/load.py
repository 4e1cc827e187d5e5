"""Load: 16 Ingest streams of photos and 32 searchers against one `lookalike serve` on Milvus Lite, for minutes.

One server (a fresh data folder in a temp dir, loopback only; Milvus Lite as its child `milvus-lite server` by
default, --milvus-embedded lite keeps it in the server's process) gets, for --minutes:
  16 concurrent Ingest streams, each its own lookalike.Client, each a generator of JPEG bytes under unique
     ids that stops at the end time; the JPEGs are made once (bench/common.make_photos, cached on disk) from
     scikit-image's photos with random rescaling, crops and flips, so they differ, and none is sent twice
     while the folder lasts (identical images stored under many ids make HNSW's recall, hence the server's
     recall calibration, a different test);
  32 concurrent searchers, each its own lookalike.Client, k=10, half by vector (a photo's embedding plus a
     little noise) and half by the id of an image already acknowledged.
Reported: items sent, acknowledged OK and stored (the collection's row count at the end; all three must be
equal), errors by status code, p50/p99 latency of searches and of ingest acknowledgements, throughput per
interval, the server's RSS (VmRSS of /proc/<pid>/status) at start, after the warm-up and at the end, and
pass/fail for "RSS growth after warm-up <= 10%" and "no errors but configured overload (RESOURCE_EXHAUSTED)".

Run (after `make setup`; the committed figure is --minutes 5: 8 to 10 minutes with start-up and drain):
    .venv/bin/python bench/load.py [--minutes 5] [--write]
--write also saves the JSON to bench/results/load.json.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from common import (  # noqa: E402
    CpuMeter,
    ManagedProcess,
    free_port,
    installed_server,
    log,
    machine_info,
    make_photos,
    percentiles,
    time_limit,
)

from lookalike import ById, Client, LookalikeClientError  # noqa: E402

RESULTS = REPO / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
COLLECTION = "load"
K = 10
SEARCH_DEADLINE_S = 60.0
RSS_GROWTH_LIMIT_PCT = 10.0
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

    def __init__(self, start: float, bucket_s: float) -> None:
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
        self.acked_ids: list[str] = []
        self.timeline: dict[int, Counter[str]] = {}
        self.last_ack = start
        self.error_samples: dict[str, str] = {}
        self.abort = threading.Event()  # set when this process grows past --max-client-rss-gib

    def bucket(self, t: float, what: str) -> None:
        self.timeline.setdefault(int((t - self.start) // self.bucket_s), Counter())[what] += 1

    def error(self, where: Counter[str], code: str, message: str) -> None:
        with self.lock:
            where[code] += 1
            self.error_samples.setdefault(code, message[:300])


def ingest_stream(i: int, streams: int, address: str, photos: list[Path], end_at: float, tally: Tally) -> None:
    """One Ingest stream of unique ids until end_at; a broken stream is opened again until then.

    Stream i sends photos i, i + streams, i + 2 * streams... (read from disk as it goes), so no photo is sent
    twice unless the run outlasts the folder.
    """
    sent_at: dict[str, float] = {}
    n = 0

    def items() -> Iterator[tuple[str, bytes, dict[str, Any]]]:
        nonlocal n
        while (now := time.monotonic()) < end_at and not tally.abort.is_set():
            item_id = f"s{i:02d}-{n:06d}"
            n += 1
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


def searcher(i: int, address: str, queries: np.ndarray, end_at: float, tally: Tally) -> None:
    """Searches k=10 until end_at, alternating by vector and by an acknowledged id."""
    rng = random.Random(2000 + i)
    noise = np.random.default_rng(i)
    with Client(address, collection=COLLECTION, timeout=SEARCH_DEADLINE_S) as client:
        while (started := time.monotonic()) < end_at and not tally.abort.is_set():
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
                time.sleep(0.05)
                continue
            t = time.monotonic()
            with tally.lock:
                tally.search_ok += 1
                tally.search_by["id" if by_id else "vector"] += 1
                tally.search_latency.append(t - started)
                tally.bucket(t, "searches")
                # The same photo is stored under many ids, so an exact tie may rank another id first.
                if by_id and (not hits or hits[0].score < 0.999):
                    tally.by_id_self_not_first += 1


def run(args: argparse.Namespace) -> dict[str, Any]:
    duration_s = args.minutes * 60.0
    result: dict[str, Any] = {
        "benchmark": "load",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "server_package": installed_server(),
        "settings": {
            "minutes": args.minutes, "warmup_s": args.warmup_s, "ingest_streams": args.streams,
            "searchers": args.searchers, "k": K, "min_recall": args.min_recall or "the server's default",
            "distinct_photos": args.photos,
            "photo": "640x480 JPEG q90 from skimage.data, random rescale/crop/flip (bench/common.make_photos)",
            "search_mix": "half by vector (a photo embedding + N(0, 0.01) noise), half by an acknowledged id",
            "server": f"lookalike serve --data-dir <temp> --milvus-embedded {args.milvus_embedded}, defaults "
                      f"otherwise; one collection {COLLECTION!r} (cosine, HNSW)",
            "rss_measured": "VmRSS of the lookalike server process alone; an embedded Milvus child (lite-server, "
                            "standalone) holds the rows and is reported beside it as milvus_child_*",
            "configured_overload": "the server's own limits at their defaults (--max-inflight-requests, "
                                   "--max-streams-per-client; every client here is one host, 127.0.0.1): "
                                   "RESOURCE_EXHAUSTED from them is allowed, any other error fails the run",
            "client_deadline_s": {"search": SEARCH_DEADLINE_S, "ingest_stream": "none"},
        },
    }
    photo_dir = Path(args.photo_dir)
    log(f"making {args.photos} photos in {photo_dir}")
    photos = make_photos(photo_dir, args.photos)
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-load-") as tmp:
        workdir = Path(tmp)
        address = f"127.0.0.1:{free_port()}"
        server = ManagedProcess(
            [str(VENV_BIN / "lookalike"), "serve", "--address", address, "--data-dir", str(workdir / "data"),
             "--milvus-embedded", args.milvus_embedded],
            workdir / "serve.log",
        )
        with server:
            pid = server.pid
            with Client(address, collection=COLLECTION) as client:
                try:
                    client.wait_until_ready(120)
                except TimeoutError as e:
                    raise RuntimeError(f"{e}\n{server.log_tail()}") from None
                client.create_collection(COLLECTION, "cosine", "HNSW", min_recall=args.min_recall)
                queries = client.embed([p.read_bytes() for p in photos[:16]])
            rss: dict[str, Any] = {"start_mib": vm_rss_mib(pid)}
            log(f"server pid {pid} at {address}, RSS {rss['start_mib']} MiB; load for {duration_s:.0f} s")

            start = time.monotonic()
            end_at = start + duration_s
            tally = Tally(start, args.bucket_s)
            samples: list[tuple[float, float | None, float | None, int]] = []
            stop_sampling = threading.Event()
            own_pid = os.getpid()

            def sample_rss() -> None:
                warm_at = start + args.warmup_s
                while not stop_sampling.wait(5.0):
                    now = time.monotonic()
                    value = vm_rss_mib(pid)
                    own = vm_rss_mib(own_pid)
                    with tally.lock:
                        unacknowledged = tally.sent - sum(tally.item_codes.values())
                    samples.append((round(now - start, 1), value, own, unacknowledged))
                    if own and own > args.max_client_rss_gib * 1024 and not tally.abort.is_set():
                        log(f"this process holds {own:.0f} MiB: stopping the load early")
                        result["aborted"] = (f"the clients' process grew to {own:.0f} MiB after "
                                             f"{now - start:.0f} s with {unacknowledged} items unacknowledged")
                        tally.abort.set()
                    if "after_warmup_mib" not in rss and now >= warm_at:
                        rss["after_warmup_mib"] = value
                        rss["milvus_child_after_warmup_mib"] = round(children_rss_mib(pid), 1)
                    if now <= end_at:
                        rss["end_of_load_mib"] = value  # the last sample while the full load still ran
                        rss["milvus_child_end_of_load_mib"] = round(children_rss_mib(pid), 1)

            threads = [
                threading.Thread(target=ingest_stream, args=(i, args.streams, address, photos, end_at, tally),
                                 daemon=True)
                for i in range(args.streams)
            ] + [
                threading.Thread(target=searcher, args=(i, address, queries, end_at, tally), daemon=True)
                for i in range(args.searchers)
            ]
            sampler = threading.Thread(target=sample_rss, daemon=True)
            with CpuMeter(watched_pid=pid) as cpu:
                sampler.start()
                for t in threads:
                    t.start()
                drain_deadline = end_at + args.drain_s
                for t in threads:
                    t.join(max(0.0, drain_deadline - time.monotonic()))
                drained_at = time.monotonic()
            stop_sampling.set()
            sampler.join(10)
            hung = sum(t.is_alive() for t in threads)
            rss["after_drain_mib"] = vm_rss_mib(pid)
            rss["children_mib_after_drain"] = children_rss_mib(pid)
            rss["max_mib"] = max((s[1] for s in samples if s[1] is not None), default=None)
            rss["clients_process_max_mib"] = max((s[2] for s in samples if s[2] is not None), default=None)
            log(f"load over; drained {drained_at - end_at:.0f} s after the end, {hung} threads still running")

            with Client(address, collection=COLLECTION) as client:
                stored = client.describe_collection(COLLECTION).row_count
            stop_started = time.monotonic()
            exit_code = server.stop()
            stop_s = time.monotonic() - stop_started
        log_text = server.log_path.read_text(errors="replace")

    with tally.lock:
        warm, end = rss.get("after_warmup_mib"), rss.get("end_of_load_mib")
        growth = round(100.0 * (end - warm) / warm, 1) if warm and end else None
        rss["growth_after_warmup_pct"] = growth
        rss["samples_every_5s"] = {
            "columns": ["t_s", "server_mib", "clients_process_mib", "items_sent_not_yet_answered"],
            "rows": samples,
        }
        errors = {
            "ingest_items": {c: n for c, n in tally.item_codes.items() if c != "OK"},
            "ingest_streams": dict(tally.stream_errors),
            "search": dict(tally.search_errors),
        }
        error_codes = {c for group in errors.values() for c in group}
        ingest_span = tally.last_ack - start
        result.update({
            "items": {
                "sent": tally.sent,
                "acknowledged_ok": tally.acked_ok,
                "stored_row_count": stored,
                "equal": tally.sent == tally.acked_ok == stored,
                "distinct_images_sent": min(tally.sent, len(photos)),
            },
            "errors_by_status": errors,
            "error_samples": tally.error_samples,
            "latency_ms": {
                "search": percentiles(tally.search_latency),
                "ingest_acknowledgement": percentiles(tally.ack_latency),
            },
            "throughput": {
                "images_per_s": round(tally.acked_ok / ingest_span, 1) if ingest_span > 0 else None,
                "searches_per_s": round(tally.search_ok / duration_s, 1),
                "searches_by": dict(tally.search_by),
                "last_ack_after_end_s": round(tally.last_ack - end_at, 1),
                f"per_{args.bucket_s:.0f}s": [
                    {"t_s": b * args.bucket_s, **tally.timeline[b]} for b in sorted(tally.timeline)
                ],
            },
            "by_id_queries_whose_top_score_was_below_0.999": tally.by_id_self_not_first,
            "server_rss": rss,
            "cpu_s": cpu.result,
            "threads_still_running_after_drain": hung,
            "server_stop": {"exit_code": exit_code, "seconds": round(stop_s, 1)},
            "server_log": {
                "lines": log_text.count("\n"),
                "error_lines": sum(" ERROR " in line or "Traceback" in line for line in log_text.splitlines()),
                "warning_lines": sum(" WARNING " in line for line in log_text.splitlines()),
                "tail": log_text.splitlines()[-5:],
            },
        })
    result["pass"] = {
        f"rss_growth_after_warmup_at_most_{RSS_GROWTH_LIMIT_PCT:.0f}_pct": growth is not None
        and growth <= RSS_GROWTH_LIMIT_PCT,
        "no_errors_but_configured_overload": error_codes <= ALLOWED_ERRORS,
        "sent_equals_acknowledged_equals_stored": result["items"]["equal"],
        "no_hung_threads": hung == 0,
        "ran_the_full_time": "aborted" not in result,
    }
    result["passed"] = all(result["pass"].values())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the load runs")
    parser.add_argument("--milvus-embedded", default="lite-server", choices=["lite", "lite-server", "standalone"],
                        help="the embedded Milvus (default lite-server: Milvus Lite in a child process, so that the "
                             "server's RSS is the server's own and not the growing database's)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is measured from this point")
    parser.add_argument("--streams", type=int, default=16, help="concurrent Ingest streams")
    parser.add_argument("--searchers", type=int, default=32, help="concurrent searchers")
    parser.add_argument("--photos", type=int, default=16384,
                        help="distinct JPEGs made once (cached on disk, about 60 KB each) and sent in turn")
    parser.add_argument("--photo-dir", default=str(Path(tempfile.gettempdir()) / "lookalike-load-photos"),
                        help="where the photos are made (reused while the recipe holds)")
    parser.add_argument("--drain-s", type=float, default=300.0,
                        help="after the end, how long to wait for outstanding acknowledgements")
    parser.add_argument("--min-recall", type=float, default=0.0,
                        help="the collection's recall target (0: the server's default)")
    parser.add_argument("--max-client-rss-gib", type=float, default=6.0,
                        help="stop the load early if this process grows past it (items queued unacknowledged)")
    parser.add_argument("--bucket-s", type=float, default=30.0, help="throughput timeline interval")
    parser.add_argument("--write", action="store_true", help="also save bench/results/load.json")
    args = parser.parse_args(argv)
    with time_limit(args.minutes * 60 + args.drain_s + 600):
        result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "load.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
