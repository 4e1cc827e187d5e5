"""Merging an earlier run's blocks into this one (--merge), so a run can redo some blocks and keep the others."""

from __future__ import annotations

from typing import Any

# Where each block's figures live in the result, so a later run can redo some blocks and keep the others.
BLOCK_KEYS: dict[str, list[tuple[str, ...]]] = {
    "native": [("native_vs_numpy",)],
    "lite": [("recall_latency",), ("qps_lite",), ("scaling", "lite"), ("server_logs", "lite")],
    "lite-server": [("scaling", "lite-server"), ("server_logs", "lite-server")],
    "standalone": [("recall_latency_standalone",), ("qps_standalone",), ("scaling", "standalone"),
                   ("server_logs", "standalone")],
    "standalone-indexes": [("recall_latency_standalone_server_indexes",), ("server_logs", "standalone-indexes")],
}


LEGACY_BLOCK_NAMES = {"native_vs_numpy": "native"}


def own_blocks(previous: dict[str, Any]) -> list[str]:
    """The blocks an earlier result holds figures of: measured by it, or merged into it with their provenance
    (a result that merged everything, as bench/results/search.json, is merged again whole)."""
    ran = [LEGACY_BLOCK_NAMES.get(name, name) for name in previous.get("phase_seconds", {})]
    if "provenance" in previous:
        return [b for b in ran if b in previous["provenance"]]
    merged = previous.get("merged_from_earlier_run", {}).get("blocks", [])
    return [b for b in ran if b not in merged]


def merge_spec(text: str) -> tuple[str, list[str]]:
    """--merge FILE or FILE:BLOCK,BLOCK (only those blocks taken from FILE)."""
    path, _, names = text.rpartition(":")
    blocks = names.split(",")
    return (path, blocks) if path and all(b in BLOCK_KEYS for b in blocks) else (text, [])


def merge_previous(result: dict[str, Any], previous: dict[str, Any], skip: list[str]) -> None:
    """Copies the figures of the blocks an earlier result holds (except `skip`, run now) into result;
    `provenance` says which invocation measured each block, when, and under what machine load."""
    for block in own_blocks(previous):
        if block in skip:
            continue
        for path in BLOCK_KEYS[block]:
            node: Any = previous
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                continue
            target = result
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = node
        legacy = {v: k for k, v in LEGACY_BLOCK_NAMES.items()}
        for key in ("phase_seconds", "errors"):
            for name in (block, legacy.get(block, block)):
                if name in previous.get(key, {}):
                    result.setdefault(key, {})[block] = previous[key][name]
        earlier = previous.get("provenance", {}).get(block, {})
        if "merged" in earlier:  # measured by a run before that one: its provenance holds
            result.setdefault("provenance", {})[block] = earlier
            continue
        build = previous.get("server_package", {})
        result.setdefault("provenance", {})[block] = {
            **earlier,  # what a --scaling-only run says it added
            "run_started": previous.get("date"),
            "load_average_1m_at_run_start": previous.get("machine", {}).get("load_average_1m_at_start"),
            "server_build_at_block_start": earlier.get("server_build_at_block_start") or {
                k: build.get(k) for k in ("sha256_16_of_modules", "installed_at")},
            "merged": "measured by an earlier invocation of this script, copied here with --merge",
        }
    for name, value in previous.get("data", {}).items():
        result.setdefault("data", {}).setdefault(name, value)
