"""How the search benchmarks measure: recall and latency against brute force, QPS from many client threads
(through lookalike or pymilvus straight to Milvus), phases interleaved round by round."""

from __future__ import annotations

import random
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from common import CpuMeter, log, percentiles
from search_data import row_id

from lookalike import Client


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
