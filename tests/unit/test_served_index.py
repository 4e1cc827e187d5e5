"""Which loaded segments of a Milvus server count as searched through their index (served_index.server_state)."""

from __future__ import annotations

from dataclasses import dataclass

from lookalike_server.served_index import server_state


@dataclass
class _Segment:
    segment_id: int
    num_rows: int
    index_id: int
    state_name: str = "Sealed"


def test_every_flushed_row_in_an_indexed_loaded_segment_gives_the_segments_and_their_indexes():
    segments = [_Segment(1, 2000, 11), _Segment(2, 1000, 11)]
    assert server_state(segments, 3000) == frozenset({(1, 11), (2, 11)})


def test_a_loaded_segment_without_its_index_is_not_served_by_it():
    # As seen on the standalone: sealed and loaded, index_id 0 (searched by brute force until the hand-over).
    assert server_state([_Segment(1, 3000, 0)], 3000) is None


def test_flushed_rows_not_yet_loaded_as_sealed_segments_are_not_served_by_the_index():
    assert server_state([], 3000) is None
    assert server_state([_Segment(1, 2000, 11)], 3000) is None


def test_growing_segments_are_left_out_they_are_searched_exactly():
    segments = [_Segment(1, 3000, 11), _Segment(2, 50, 0, "Growing")]
    assert server_state(segments, 3000) == frozenset({(1, 11)})


def test_a_replaced_segment_changes_the_state():
    before = server_state([_Segment(1, 1500, 11), _Segment(2, 1500, 11)], 3000)
    after = server_state([_Segment(3, 3000, 12)], 3000)
    assert before is not None and after is not None and not before <= after
