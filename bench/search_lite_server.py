"""Block lite-server: `milvus-lite server` as a child process (lookalike --milvus-uri): its scaling points."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from search_common import log_findings, lookalike_serve, serve_dim
from search_data import Clusters, ensure_clusters
from search_scaling import scaling_points

from lookalike_server.embedded_milvus import MilvusLiteServer


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


if __name__ == "__main__":  # this block alone: bench/search.py --blocks lite-server [flags]
    import search

    sys.exit(search.main(["--blocks", "lite-server", *sys.argv[1:]]))
