"""Block lite: Milvus Lite in lookalike's process: the recall/latency matrix per data set, index type and k,
QPS through lookalike vs pymilvus on a copy of the same collection, and the store's scaling points."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common import log
from search_common import (
    LOW_TARGET,
    QPS_K,
    RECALL_TARGET,
    calibrations,
    default_ef,
    effort_for,
    lite_index_built,
    log_findings,
    lookalike_serve,
    prepare_collection,
    serve_dim,
    wait_calibrated,
)
from search_data import Clusters, DataSet, ensure_clusters, make_datasets
from search_measure import direct_recall, direct_search, grpc_search, interleaved_qps, measure_qps, recall_latency
from search_scaling import scaling_points

from lookalike import Client

INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8")


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
        only = {"datasets": ["clustered"], "indexes": ["HNSW"]} if args.qps_only else {}
        run_args = argparse.Namespace(**{**vars(args), **only})
        datasets = [] if args.scaling_only else make_datasets(run_args, clusters)
        result.setdefault("data", {}).update({ds.name: ds.description for ds in datasets})
        matrix: dict[str, Any] = {} if args.qps_only else result.setdefault("recall_latency", {})
        for ds in datasets:
            for index_type in run_args.indexes:
                name = f"b_{ds.name}_{index_type.lower()}"
                log(f"[lite] {ds.name} {index_type}")
                entry = prepare_collection(address, name, index_type, ds.rows, ds.queries[0], args)
                entry["index_files_built_before_measuring"] = lite_index_built(db, name)
                if not args.qps_only:
                    entry["per_k"] = recall_latency(address, name, ds.queries, ds.truth, args.ks,
                                                    args.measure_budget, metrics_port)
                    log(f"  {json.dumps({k: v for k, v in entry['per_k'].items() if k.isdigit()})}")
                matrix.setdefault(ds.name, {})[index_type] = entry
                if ds.name == "clustered" and index_type == "HNSW" and args.qps:
                    try:
                        result["qps_lite"] = lite_qps(args, address, server.proc.pid, db, name, ds, workdir)
                        if args.qps_only:  # how the collection was filled and calibrated, as the matrix says
                            result["qps_lite"]["collection_prepared"] = entry
                    except Exception as e:  # the rest of the matrix is still worth measuring
                        result["qps_lite"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                        log(f"[lite] QPS failed: {e}")
                with Client(address) as client:
                    client.drop_collection(name)
        if args.qps_only:  # the earlier run's matrix, scaling points and server log stay
            result["qps_lite"]["server_log_findings"] = log_findings(server)
            return
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


if __name__ == "__main__":  # this block alone: bench/search.py --blocks lite [flags]
    import search

    sys.exit(search.main(["--blocks", "lite", *sys.argv[1:]]))
