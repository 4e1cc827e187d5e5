"""Block standalone: the real Milvus standalone (PyPI `milvus`): recall and QPS through lookalike vs pymilvus
on the clustered HNSW collection, and the store's scaling points."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import log
from search_common import (
    LOW_TARGET,
    QPS_K,
    RECALL_TARGET,
    Cap,
    calibrations,
    default_ef,
    effort_for,
    log_findings,
    lookalike_serve,
    prepare_collection,
    serve_dim,
    server_index_state,
    wait_calibrated,
    wait_index,
)
from search_data import Clusters, ensure_clusters, make_datasets
from search_measure import direct_recall, direct_search, grpc_search, interleaved_qps, measure_qps, recall_latency
from search_scaling import scaling_points

from lookalike import Client
from lookalike_server.embedded_milvus import standalone


def standalone_block(args: argparse.Namespace, workdir: Path, result: dict[str, Any],
                     clusters_holder: list[Clusters]) -> None:
    """The real Milvus standalone (PyPI `milvus`): recall and QPS on the clustered HNSW collection, and scaling
    (--scaling-only: that alone)."""
    if not standalone.available():
        result["qps_standalone"] = {"skipped": f"the Milvus standalone server is missing: {standalone.INSTALL}"}
        return
    milvus = standalone.MilvusStandalone(workdir / "standalone")
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
            if args.qps_only:  # the earlier run's recall/latency, scaling points and server log stay
                result["qps_standalone"]["server_log_findings"] = log_findings(server)
                return
            result.setdefault("scaling", {}).setdefault("standalone", {}).update(scaling_points(
                args, address, clusters, "standalone", uri=uri,
                serve_for_dim=lambda dim: serve_dim(workdir, dim, "--milvus-uri", uri)))
            if not args.scaling_only:
                result.setdefault("server_logs", {})["standalone"] = log_findings(server)
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
    if not args.qps_only:  # --qps-only: the earlier run's recall/latency stays
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
        if args.qps_only:  # how the collection was filled and calibrated, as the recall/latency entry says
            result["qps_standalone"]["collection_prepared"] = entry
    with Client(address) as client:
        client.drop_collection(name)


if __name__ == "__main__":  # this block alone: bench/search.py --blocks standalone [flags]
    import search

    sys.exit(search.main(["--blocks", "standalone", *sys.argv[1:]]))
