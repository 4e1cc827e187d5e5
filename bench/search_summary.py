"""The summary of bench/results/search.json: the targets with pass/fail, the recommended store for a million
rows, and the notes that say how the figures were measured."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from common import ratio
from search_common import RECALL_TARGET, default_ef
from search_data import MODEL_DIM


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets with pass/fail, and which store serves the largest size best."""
    summary: dict[str, Any] = {}
    worst: dict[str, Any] = {}
    for source in ("recall_latency", "recall_latency_standalone", "recall_latency_standalone_server_indexes"):
        for ds, per_index in result.get(source, {}).items():
            if not isinstance(per_index, dict):  # a block skipped, with its reason
                continue
            for index_type, entry in per_index.items():
                for k, figures in entry.get("per_k", {}).items():
                    if k.isdigit():
                        worst[f"{source}/{ds}/{index_type}/k={k}"] = figures["recall_at_10"]
    if worst:
        low = min(worst, key=worst.__getitem__)
        summary["recall_at_10_min"] = {"value": worst[low], "where": low, "target": RECALL_TARGET,
                                       "pass": worst[low] >= RECALL_TARGET,
                                       "below_target": {k: v for k, v in worst.items() if v < RECALL_TARGET}}
    for store, target in (("lite", 5.0), ("standalone", 1.0)):
        block = result.get(f"qps_{store}", {})
        grpc, direct = block.get(f"qps_grpc_{store}", {}).get("qps"), block.get(f"qps_direct_{store}", {}).get("qps")
        low_grpc = block.get(f"qps_grpc_{store}_min_recall_0.9", {}).get("qps")
        low_direct = block.get(f"qps_direct_{store}_ef_for_0.9", {}).get("qps")
        if grpc is not None:
            summary[f"qps_grpc_{store}"] = grpc
            summary[f"qps_direct_{store}"] = direct
            summary[f"qps_grpc_{store}_min_recall_0.9"] = low_grpc
            summary[f"qps_direct_{store}_ef_for_0.9"] = low_direct
            summary[f"ratio_{store}"] = {"value": ratio(grpc, direct), "target": target,
                                         "pass": bool(ratio(grpc, direct) and ratio(grpc, direct) >= target),
                                         "at_min_recall_0.9": ratio(low_grpc, low_direct)}
    native = result.get("native_vs_numpy", {})
    if "speedups" in native:
        # Issue 24's targets: 2x numpy for the kernels, at least numpy's GEMM + argpartition for shared candidates.
        targets = {name: 1.0 if name == "rerank_same_candidates" else 2.0 for name in native["speedups"]}
        summary["native_vs_numpy"] = {**native["speedups"], "target": targets,
                                      "pass": {name: v >= targets[name] for name, v in native["speedups"].items()}}
    failures = calibration_failures(result)
    if failures:
        summary["calibration_failures"] = failures
    summary["recommended_default"] = recommend(result.get("scaling", {}))
    return summary


def calibration_failures(node: Any, path: str = "") -> dict[str, str]:
    """Every wait that ended because the server logged a failed calibration, by where it happened."""
    found: dict[str, str] = {}
    if isinstance(node, dict):
        if node.get("failed") and "server_error" in node:
            found[path] = node["server_error"]
        for key, value in node.items():
            if key != "summary":
                found.update(calibration_failures(value, f"{path}/{key}" if path else key))
    return found


def recommend(scaling: dict[str, Any], target_rows: int = 1_000_000) -> dict[str, Any]:
    """Which store should serve a million rows. Where points of target_rows were measured: among the stores
    that served theirs (all rows in and queries measured within the cap), the lowest single-query p50 wins, and
    p50s within 10% of the best are decided by batched QPS. Otherwise each store's single-query p50 and batched
    call time are fitted linearly over its measured sizes of the model's dimension (Milvus Lite's per-call cost
    is a Python loop over every row) and projected to target_rows; the lowest projected single-query p50 wins."""
    table: dict[str, Any] = {}
    for store, points in scaling.items():
        done = sorted(((int(label.split("x")[0]), p) for label, p in points.items()
                       if "single_query_k10" in p and label.endswith(f"x{MODEL_DIM}")), key=lambda x: x[0])
        if len(done) < 2:
            continue
        rows = np.array([r for r, _ in done], dtype=np.float64)
        p50 = np.array([p["single_query_k10"]["p50"] for _, p in done])
        call = np.array([p["batched_k10"]["ms_per_call"] for _, p in done])
        batch = done[-1][1]["batched_k10"]["queries_per_call"]
        p50_fit, call_fit = np.polyfit(rows, p50, 1), np.polyfit(rows, call, 1)
        largest = done[-1][1]
        table[store] = {
            "measured_rows": [int(r) for r in rows],
            "single_query_p50_ms": [float(x) for x in p50],
            "batched_qps": [p["batched_k10"]["qps"] for _, p in done],
            "concurrent_qps_32_clients": [p["concurrent_k10"]["qps"] for _, p in done],
            "ingest_rows_per_s": [p["ingest"].get("rows_per_s") for _, p in done],
            "single_query_p50_growth_smallest_to_largest": round(float(p50[-1] / p50[0]), 2),
            f"projected_single_query_p50_ms_at_{target_rows}": round(float(np.polyval(p50_fit, target_rows)), 1),
            f"projected_batched_qps_at_{target_rows}": round(
                float(batch * 1e3 / max(1e-3, np.polyval(call_fit, target_rows))), 1),
            "largest_point_calibrated": bool(largest.get("calibration_wait", {}).get("calibrations")),
        }
    measured = {store: at_size(label, point) for store, points in scaling.items()
                for label, point in points.items() if int(label.split("x")[0]) == target_rows}
    flag = {"lite": "--milvus-embedded lite", "lite-server": "--milvus-embedded lite-server",
            "standalone": "--milvus-embedded standalone"}
    served = [store for store, figures in measured.items() if figures["served"]]
    caveats = []
    if served:
        fastest = min(measured[store]["single_query_p50_ms"] for store in served)
        close = [store for store in served if measured[store]["single_query_p50_ms"] <= 1.1 * fastest]
        best = max(close, key=lambda store: measured[store]["batched_qps"] or 0.0)
        criterion = (f"measured at {target_rows:,} rows: among the stores that served them within the cap (all "
                     "rows in, queries measured), the lowest single-query p50 (k=10, one client); p50s within 10% "
                     "of the lowest are decided by the higher batched QPS (32 queries per search_many call)")
        for other in served:
            for key, label in (("batched_qps", "batched QPS"), ("concurrent_qps_32_clients", "32-client QPS")):
                if (measured[other][key] or 0.0) > (measured[best][key] or 0.0) and other != best:
                    caveats.append(f"{other} beats {best} on {label} at {target_rows:,} rows "
                                   f"({measured[other][key]} vs {measured[best][key]})")
        caveats += [f"{store}: did not finish every phase at {target_rows:,} rows within its cap: "
                    f"{figures['stopped_or_cut']}" for store, figures in measured.items()
                    if not figures["finished_within_cap"]]
        caveats += [f"{store}: its {target_rows:,}-row point ran uncalibrated, at the server's default effort"
                    for store in served if not measured[store]["calibrated"]]
        if not measured[best]["point"].endswith(f"x{MODEL_DIM}"):
            caveats.append(f"the {target_rows:,}-row points are {measured[best]['point']}, another dimension than "
                           f"the {MODEL_DIM}-d smaller points: per-row costs differ by dimension")
        caveats.append("stores were measured one after another on a shared 2-core machine (see each run's load)")
    elif table:
        key = f"projected_single_query_p50_ms_at_{target_rows}"
        best = min(table, key=lambda store: table[store][key])
        criterion = key
        caveats = [f"{store}: its largest size ran uncalibrated (the server's calibration failed), at the default "
                   f"ef {default_ef(10)} instead of a calibrated one, so its throughput there is understated"
                   for store, figures in table.items() if not figures["largest_point_calibrated"]]
        caveats.append("stores were measured one after another on a shared 2-core machine (see each run's load); "
                       "the projection is a straight line through the measured sizes, not a measurement")
        caveats += [f"{store}: did not finish {target_rows:,} rows: {figures['stopped_or_cut']}"
                    for store, figures in measured.items()]
    else:
        return {"store": None, "reason": f"no store finished {target_rows:,} rows and fewer than two sizes were "
                                         "measured per store", f"measured_at_{target_rows}": measured}
    return {"store": best, "serve_flag": flag.get(best), "criterion": criterion,
            f"measured_at_{target_rows}": measured, "projection_from_model_dimension_points": table,
            "caveats": caveats, "current_serve_default": current_serve_default()}


def at_size(label: str, point: dict[str, Any]) -> dict[str, Any]:
    """One store's figures at one size, and whether it finished every phase within the cap."""
    cap = point.get("cap", {})
    cuts = cap.get("phases_cut", [])
    served = "single_query_k10" in point and "batched_k10" in point and not point.get("stopped")
    finished = served and "concurrent_k10" in point and not cuts
    return {
        "point": label,
        "served": served,
        "finished_within_cap": finished,
        "ingest_rows_per_s": point.get("ingest", {}).get("rows_per_s"),
        "single_query_p50_ms": point.get("single_query_k10", {}).get("p50"),
        "single_query_p99_ms": point.get("single_query_k10", {}).get("p99"),
        "recall_at_10": point.get("single_query_k10", {}).get("recall_at_10"),
        "batched_qps": point.get("batched_k10", {}).get("qps"),
        "concurrent_qps_32_clients": point.get("concurrent_k10", {}).get("qps"),
        "calibrated": bool(point.get("calibration_wait", {}).get("calibrations")),
        "seconds": cap.get("seconds"),
        **({} if finished else {"stopped_or_cut": point.get("stopped") or cuts or point.get("error")
                                or "no figures"}),
    }


def current_serve_default() -> str:
    from lookalike_server.config import ServerConfig

    return f"{ServerConfig.milvus_embedded} (ServerConfig.milvus_embedded of the installed server)"


def notes(args: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    measured_s = sum(result.get("phase_seconds", {}).values()) - sum(  # the matrix run, not added scaling points
        p.get("seconds_this_run", 0.0) for p in result.get("provenance", {}).values())
    out = [
        f"Sizes: {args.rows} rows of {MODEL_DIM}-d (the model's dimension) per collection in the recall/latency matrix "
        "and the QPS comparison, not 100,000: the matrix is 8 collections (2 data sets x 4 index types), each ingested "
        "through lookalike (about 800-2,000 rows/s here), indexed, and calibrated by the server (which reads every "
        "row for its exact reference), and 100,000 rows each would have doubled a run that already took "
        f"{measured_s / 60:.0f} minutes of measuring on this shared 2-core machine. Scaling points: "
        + "; ".join(f"{store} {', '.join(points)}" for store, points in result.get("scaling", {}).items()) + ".",
        "Index really built before measuring: every lossy collection was measured only after DescribeCollection "
        "reported the server's recall calibration for min_recall 0.99 (calibration_wait.waited_s; the server "
        "flushes and waits for the index before it calibrates), or after the server logged that its calibration "
        "failed (calibration_wait.failed). For Milvus Lite, whose describe_index always says Finished, "
        "index_files_built_before_measuring checks that an index file stands beside every flushed data segment (it "
        "cannot see rows still unflushed in the write-ahead log); for the standalone, describe_index_before_measuring "
        "shows indexed_rows and pending_index_rows.",
        "Recall is against exact numpy brute force over the same rows (inner product of unit vectors = cosine), with "
        "held-out queries; latency is one client thread, one query per call, the ks interleaved per query. A "
        f"collection's queries stop after {args.measure_budget:.0f} s (queries_measured says how many ran).",
        "QPS: 32 threads in this process, one query per call, by vector, k=10, random picks from the same held-out "
        "queries; phases interleaved round by round (gRPC 0.99, direct 0.99, gRPC 0.9, direct 0.9) because other "
        "benchmarks shared this machine; each round's cpu field splits the busy CPU between this process (clients, "
        "and for direct Lite the Milvus Lite engine itself, opened in this process on a copy of the collection's "
        "files), the watched process (the lookalike server for Lite, the milvus server for standalone) and "
        "everything else on the machine (other_processes_s).",
        "The direct clients ask Milvus for k=10 ids only, with the ef the server calibrated (its default 512 when it "
        "has no calibration); lookalike asks the float indexes (FLAT, HNSW, IVF_FLAT) for k ids and orders "
        "Milvus' own exact scores; it over-fetches (2k, at least k+32) with vectors and re-ranks exactly only "
        "for IVF_SQ8.",
        "scaling: clustered data (same centres), HNSW cosine, measured after the calibration wait; single_query_k10 "
        "is one thread; batched_k10 is search_many with 32 queries per call from one thread; concurrent_k10 is 32 "
        "threads, one query per call. The lite-server store reuses the in-process store's finished collection files "
        "(same engine and rows), so it has no ingest figure of its own.",
    ]
    million = {label: point for points in result.get("scaling", {}).values() for label, point in points.items()
               if label.startswith("1000000x")}
    if million:
        caps = {p.get("cap", {}).get("cap_s") for p in million.values()} - {None}
        out.append(f"1,000,000 rows ({', '.join(sorted(million))}; "
                   "a 256-d point is served through a copy of the model card declaring that dimension), ingested "
                   f"through gRPC like the smaller points, each store's point capped at "
                   f"{', '.join(f'{c:.0f}' for c in sorted(caps)) or 'no'} s from the end of making its data "
                   "(--scaling-cap): a phase past the cap is cut and recorded in the point's cap.phases_cut (which "
                   "phase, after how long, how many rows were in), the calibration wait leaves --scaling-reserve "
                   "seconds for the queries, and a point whose wait ran out is measured uncalibrated. At a million "
                   "rows the server's calibration takes its highest-effort search as the reference (not an exact "
                   "scan). Other work (tests, other benchmarks) may have shared the machine while these points ran: "
                   "the load at each run's start is in provenance.")
    elif not any(dim != MODEL_DIM for _, dim in args.scaling):
        lite = result.get("scaling", {}).get("lite", {}).get(f"100000x{MODEL_DIM}", {})
        rate = lite.get("ingest", {}).get("rows_per_s")
        wait = lite.get("calibration_wait", {}).get("waited_s")
        seen = (f"Milvus Lite stored {rate:.0f} rows/s and needed {wait / 60:.1f} more minutes to index and "
                "calibrate 100,000 rows here" if rate and wait else "Milvus Lite stores ~1,000 rows/s here")
        out.append(f"1,000,000 rows (at 256-d) skipped: {seen}, so a million on each of 3 stores would take hours. "
                   "recommended_default projects the measured sizes to a million instead. On a bigger machine run "
                   "`--scaling 10000x1280,100000x1280,1000000x256` (a 256-d point is served through a copy of the "
                   "model card declaring 256 dimensions).")
    if args.centres == "photos":
        out.append("Clustered centres are real EfficientNet-Lite0 embeddings of augmented photos; the rows around "
                   "them are synthetic (embedding 50,000 photos would take ~10 minutes of CPU here).")
    runs = {p.get("run_started") for p in result.get("provenance", {}).values()}
    if len(runs) > 1:
        out.append("The blocks come from more than one invocation (provenance: which, when, and the machine load at "
                   "its start); the data is the same (fixed seeds, the same photos and model; see the centres "
                   "fingerprint in data).")
    return out
