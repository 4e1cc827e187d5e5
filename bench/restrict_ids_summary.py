"""restrict_ids.py's summary: the table, the verdict at the largest set and the conclusion, derived from the
measured stores (redone alone from a saved result with --summarize)."""

from __future__ import annotations

from typing import Any

import numpy as np
from restrict_ids_common import HIGH_EF


def table(stores: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for store, block in stores.items():
        for size, alts in block.get("cells", {}).items():
            for alt, c in alts.items():
                rows.append({"store": store, "ids": int(size), "alternative": alt,
                             **{k: c.get(k) for k in ("setup_s", "p50_ms", "queries", "teardown_s", "recall_at_10",
                                                       "bytes_to_milvus_per_query", "bytes_from_milvus_per_query")},
                             **({f"p50_ms_ef_{HIGH_EF}": c[f"at_ef_{HIGH_EF}"]["p50_ms"],
                                 f"recall_at_10_ef_{HIGH_EF}": c[f"at_ef_{HIGH_EF}"]["recall_at_10"]}
                                if f"at_ef_{HIGH_EF}" in c else {}),
                             **({"ef": c["ef"]} if "ef" in c else {}),
                             **({"error": c["error"][:200]} if "error" in c else {}),
                             **({"skipped": c["skipped"]} if "skipped" in c else {})})
    return rows


def variants(c: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A cell's query figures: at the server's ef (or lookalike's own), and at HIGH_EF when measured."""
    out = [(f"ef {c['ef']}" if "ef" in c else "lookalike", c)]
    if f"at_ef_{HIGH_EF}" in c:
        out.append((f"ef {HIGH_EF}", c[f"at_ef_{HIGH_EF}"]))
    return out


def conclude(stores: dict[str, Any], recall_floor: float = 0.95) -> dict[str, Any]:
    """Per store, at the largest set: the alternative with the lowest one-off cost of one query (setup + p50 +
    teardown) among those with recall@10 >= recall_floor (at the server's ef, else at HIGH_EF), and the lowest
    per-query p50 once set up (a set searched many times, or tagged once at ingest)."""
    out: dict[str, Any] = {}
    for store, block in stores.items():
        if not block.get("cells"):
            continue
        largest = max(int(size) for size in block["cells"])
        alts = block["cells"][str(largest)]
        ok: dict[str, tuple[str, float, float]] = {}  # alternative -> (variant, p50 ms, setup + teardown s)
        for alt, c in alts.items():
            usable = [(name, v["p50_ms"]) for name, v in variants(c)
                      if v.get("p50_ms") is not None and v.get("recall_at_10", 0) >= recall_floor
                      and not v.get("hits_outside_set")]
            if usable:
                name, p50 = min(usable, key=lambda u: u[1])
                ok[alt] = (name, p50, c["setup_s"] + c["teardown_s"])
        if not ok:
            out[store] = {"ids": largest, "best_one_off": None, "why": "no alternative finished with enough recall"}
            continue
        one_off = {a: round(1e3 * fixed + p50, 1) for a, (_, p50, fixed) in ok.items()}
        per_query = {a: p50 for a, (_, p50, _) in ok.items()}
        best = min(one_off, key=one_off.get)
        fastest = min(per_query, key=per_query.get)
        if fastest != best and per_query[best] > per_query[fastest]:
            # Searches of the same set after which the cheaper query repays the set-up and tear-down.
            extra_s = ok[fastest][2] - ok[best][2]
            saved_s = (per_query[best] - per_query[fastest]) / 1e3
            break_even: dict[str, Any] = {"alternative": fastest, "searches": int(np.ceil(extra_s / saved_s))}
        else:
            break_even = {}
        rows = block.get("ingest", {}).get("rows")
        out[store] = {"ids": largest, "rows": rows, "set_is_the_whole_collection": largest == rows,
                      "index_finished_before_measuring": not block.get("ready", {}).get("index_timed_out", False),
                      "recall_floor": recall_floor, "best_one_off": best,
                      "one_off_ms_setup_plus_p50_plus_teardown": one_off,
                      "best_per_query_once_set_up": fastest, "p50_ms": per_query,
                      **({"repays_after_searches_of_the_same_set": break_even} if break_even else {}),
                      "searched_at": {a: name for a, (name, _, _) in ok.items()},
                      "lookalike_current_path_is_best_one_off": best == "a_lookalike",
                      "excluded_low_recall_or_failed": sorted(set(alts) - set(ok))}
    return out


def conclusion_text(verdict: dict[str, Any]) -> str:
    parts = []
    for store, v in verdict.items():
        if not v.get("best_one_off"):
            parts.append(f"{store}: nothing usable measured at {v['ids']:,} ids")
            continue
        one = v["one_off_ms_setup_plus_p50_plus_teardown"]
        ranked = ", ".join(f"{a} {one[a]:,.0f} ms" for a in sorted(one, key=one.get))
        which = "lookalike's current path" if v["lookalike_current_path_is_best_one_off"] else "NOT lookalike's path"
        caveats = (["the set is every row"] if v["set_is_the_whole_collection"] else []) + (
            [] if v["index_finished_before_measuring"] else ["Milvus had not finished the index"])
        where = f" of {v['rows']:,} rows" + (f" ({'; '.join(caveats)})" if caveats else "")
        text = (f"{store} at {v['ids']:,} ids{where}, one search (setup + p50 + teardown): {ranked}; best "
                f"{v['best_one_off']} ({which}); cheapest per query once set up: {v['best_per_query_once_set_up']}")
        if "repays_after_searches_of_the_same_set" in v:
            repay = v["repays_after_searches_of_the_same_set"]
            text += f", which repays its set-up after about {repay['searches']} searches of the same set"
        parts.append(text)
    return ". ".join(parts)

def summarize(result: dict[str, Any]) -> None:
    """The derived parts (table, verdict, conclusion, notes) from the measured `stores`."""
    stores = result["stores"]
    verdict = conclude(stores)
    result["table"] = table(stores)
    result["verdict_at_largest"] = verdict
    result["conclusion"] = conclusion_text(verdict)
    result["notes"] = [
        "setup/teardown seconds are per id set (c: read rows + upsert tagged / upsert back; d: read rows + insert "
        "copies / release + drop partition); p50_ms is per query, one query per call; recall@10 against numpy "
        "exact search within the set",
        "bytes are payload estimates: expressions, ids, metadata JSON and float32 vectors; protobuf framing left out",
        "a read by id on lookalike's path uses Strong consistency on a Milvus server (Store.get); the alternatives "
        "here read with Session",
        "the machine is shared: see machine.load_average_1m_at_start / load_average_1m_at_end",
        "stores.*.ready says whether Milvus had finished the index and lookalike its recall calibration before the "
        "cells ran (each wait is capped by --ready-timeout; the searches run whatever the state)",
        "partition_rows_visible_after_queries is a count(*) query with partition_names: Milvus Lite ignores "
        "partition_names there and counts the whole collection (its partition searches do keep to the partition: "
        "hits_outside_set 0)",
    ]
