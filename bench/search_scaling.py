"""The scaling curve: per store and size, ingest rate, single-query latency, batched and concurrent QPS
(blocks lite, lite-server and standalone each measure theirs)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import log, percentiles
from search_common import (
    RECALL_TARGET,
    SERVERS,
    Cap,
    CapReached,
    lite_index_built,
    log_findings,
    prepare_collection,
    server_index_state,
    wait_calibrated,
    wait_index,
)
from search_data import MODEL_DIM, Clusters, exact_top, project, row_id
from search_measure import grpc_search, measure_qps

from lookalike import Client


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
