"""Block standalone-indexes: the index types only a Milvus server builds (IVF_PQ, ScaNN), recall and latency
on the real standalone, measured as the Lite matrix is."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import log
from search_common import (
    Cap,
    log_findings,
    lookalike_serve,
    prepare_collection,
    server_index_state,
    wait_index,
)
from search_data import Clusters, ensure_clusters, make_datasets
from search_measure import recall_latency

from lookalike import Client
from lookalike_server.embedded_milvus import standalone

# Index types only a Milvus server builds (Milvus Lite refuses them): measured on the standalone alone.
SERVER_ONLY_INDEXES = ("IVF_PQ", "SCANN")


def standalone_indexes_block(args: argparse.Namespace, workdir: Path, result: dict[str, Any],
                             clusters_holder: list[Clusters]) -> None:
    """The index types a Milvus server adds (IVF_PQ, ScaNN) on the real standalone: recall and latency on both
    data sets, measured as the Lite matrix is (after the server's calibration, which waits for the index)."""
    if not standalone.available():
        result["recall_latency_standalone_server_indexes"] = {
            "skipped": f"the Milvus standalone server is missing: {standalone.INSTALL}"}
        return
    milvus = standalone.MilvusStandalone(workdir / "standalone-indexes")
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


if __name__ == "__main__":  # this block alone: bench/search.py --blocks standalone-indexes [flags]
    import search

    sys.exit(search.main(["--blocks", "standalone-indexes", *sys.argv[1:]]))
