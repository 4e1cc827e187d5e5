"""Which index Milvus answers a collection's searches with: the recall calibration must measure that one.

A calibration measured while some rows are still searched another way (exactly, before Milvus Lite attaches a
segment's index, or by a Milvus server's query node before it loads an index the index node has built) finds
every effort good enough, and the searches after the hand-over then miss the target (issue 22: recall@10 0.43
at a calibrated nprobe of 8). So the calibration waits for a state in which every flushed row is searched
through its index, keeps that state's fingerprint, and is measured again whenever the fingerprint changes.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable
from typing import Any

IndexState = frozenset[Hashable]  # one entry per (segment, index) that answers searches


def server_state(loaded_segments: Iterable[Any], flushed_rows: int) -> IndexState | None:
    """From a Milvus server's loaded segments (`list_loaded_segments`): the segments and their indexes once
    every flushed row is in a loaded segment with an index (rows still growing are searched exactly, which
    only raises recall), else None."""
    sealed = [s for s in loaded_segments if str(getattr(s, "state_name", "Sealed")) != "Growing"]
    if any(s.index_id == 0 for s in sealed) or sum(s.num_rows for s in sealed) < flushed_rows:
        return None
    return frozenset((s.segment_id, s.index_id) for s in sealed)


def lite_state(data_path: str, name: str, vector_field: str = "vector") -> IndexState | None:
    """The same for Milvus Lite in this process: every segment with rows has its vector index attached in
    memory (its index file appears while it is written, before the index is attached); None while one has not.
    """
    from milvus_lite.server_manager import server_manager_instance  # Milvus Lite 3's in-process registry

    entry = server_manager_instance._servers.get(os.path.abspath(data_path))
    if entry is None:
        raise LookupError(f"no Milvus Lite runs in this process for {data_path}")
    segments = entry[1].get_collection(name)._segments_snapshot()
    if any(seg.num_rows and vector_field not in seg.indexes for seg in segments):
        return None
    return frozenset((seg.file_path, id(seg.indexes[vector_field])) for seg in segments if seg.num_rows)
