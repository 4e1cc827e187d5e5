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
standalone parts use the Milvus standalone that lookalike[server] installs):
    .venv/bin/python bench/search.py [--rows 50000] [--scaling 10000x1280,100000x1280] [--write]
    .venv/bin/python bench/search.py --blocks standalone --merge earlier.json --write   # redo one part
A scaling point of another dimension (e.g. 1000000x256) serves vectors through a copy of the model card
declaring that dimension. --write also saves bench/results/search.json. Add scaling points alone, each capped:
    .venv/bin/python bench/search.py --blocks lite,lite-server,standalone --scaling-only --scaling 1000000x256 \
        --scaling-cap 1500 --merge bench/results/search.json --write

One file per block, with the data sets and helpers they share; this driver runs the chosen blocks, merges earlier
runs (--merge) and writes the summary:
    search_native.py, search_lite.py, search_lite_server.py, search_standalone.py, search_standalone_indexes.py
    search_data.py (data sets), search_common.py (servers, caps, collections), search_measure.py (recall, QPS),
    search_scaling.py (the scaling curve), search_merge.py (--merge), search_summary.py (summary, notes)
Each block file runs its block alone with this driver's flags: `.venv/bin/python bench/search_lite.py --rows 2000`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import emit, installed_server, log, machine_info, time_limit  # noqa: E402
from search_common import QPS_K, RECALL_TARGET  # noqa: E402
from search_data import MODEL_DIM, Clusters, dataset_description  # noqa: E402
from search_lite import INDEX_TYPES, lite_block  # noqa: E402
from search_lite_server import lite_server_block  # noqa: E402
from search_merge import BLOCK_KEYS, merge_previous, merge_spec  # noqa: E402
from search_native import native_block  # noqa: E402
from search_standalone import standalone_block  # noqa: E402
from search_standalone_indexes import standalone_indexes_block  # noqa: E402
from search_summary import notes, summarise  # noqa: E402

QPS_ONLY_KEYS = {"lite": ["qps_lite"], "standalone": ["qps_standalone"]}  # what --qps-only measures again


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
            "qps_only": args.qps_only,
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
        # --scaling-only and --qps-only keep the blocks they run too: only the figures they measure are replaced.
        partial = args.scaling_only or args.qps_only
        run_now = [] if partial else [b for b in every if b in args.blocks]
        earlier_points: dict[str, dict[str, Any]] = {}  # scaling points of the merged files, by store
        for earlier in args.merge:  # later files win
            path, only = merge_spec(earlier)
            previous = json.loads(Path(path).read_text())
            merge_previous(result, previous, run_now + [b for b in BLOCK_KEYS if only and b not in only])
            if "native_client" in previous and not only:  # written into the file by bench/search_native_client.py
                result["native_client"] = previous["native_client"]
            for store, points in previous.get("scaling", {}).items():
                if not only or store in only:
                    earlier_points.setdefault(store, {}).update(points)
        blocks = [(name, every[name]) for name in every if name in args.blocks]
        for name, block in blocks:
            block_started = time.monotonic()
            build = installed_server()  # the servers this block starts run the build installed now
            kept = result.get("provenance", {}).get(name) if partial else None
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
            if kept and args.qps_only:
                result["provenance"][name].update(
                    measured_this_run=QPS_ONLY_KEYS.get(name, []), seconds_this_run=seconds, other_figures=kept)
            elif kept:
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
    for store, figures in result.get("native_client", {}).get("stores", {}).items():  # as that script sums them
        result["summary"][f"qps_grpc_{store}_native_client"] = figures["native"]["qps"]
        result["summary"][f"qps_grpc_{store}_python_client_same_run"] = figures["python"]["qps"]
    result["total_seconds_this_invocation"] = round(time.monotonic() - started, 1)
    result["measured_seconds_all_blocks"] = round(sum(result.get("phase_seconds", {}).values()), 1)
    result["notes"] = notes(args, result)
    return result


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
    parser.add_argument("--qps-only", action="store_true",
                        help="run only the QPS comparison of the lite and standalone blocks (the clustered HNSW "
                             "collection, filled and calibrated as in a full run; no recall/latency matrix, no "
                             "scaling); with --merge, the blocks' other figures are kept")
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
    if args.qps_only and (args.scaling_only or not args.qps):
        parser.error("--qps-only measures the QPS alone: not with --scaling-only or --no-qps")
    with time_limit(args.timeout):
        result = run(args)
    emit(result, "search", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
