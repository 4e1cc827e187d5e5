"""A read with no level asked waits for this server's writes only if its caller wrote to that collection lately."""

from __future__ import annotations

from lookalike_server.own_writes import OwnWrites


def test_a_caller_that_wrote_reads_at_session_and_others_read_what_milvus_applied():
    writes = OwnWrites(remember_s=60.0)
    assert writes.level("ipv4:10.0.0.1:5000", "photos", "", now=0.0) == "Eventually"
    writes.wrote("ipv4:10.0.0.1:5000", "photos", now=1.0)
    assert writes.level("ipv4:10.0.0.1:5000", "photos", "", now=2.0) == "Session"
    assert writes.level("ipv4:10.0.0.1:5000", "other", "", now=2.0) == "Eventually"  # wrote elsewhere
    assert writes.level("ipv4:10.0.0.2:5000", "photos", "", now=2.0) == "Eventually"  # another connection
    assert writes.level("ipv4:10.0.0.1:5000", "photos", "", now=61.5) == "Eventually"  # long applied


def test_an_asked_level_is_kept_and_an_unknown_caller_waits_for_every_write():
    writes = OwnWrites()
    assert writes.level("ipv4:10.0.0.1:5000", "photos", "Strong") == "Strong"
    assert writes.level("ipv4:10.0.0.1:5000", "photos", "Session") == "Session"
    assert writes.level("", "photos", "") == "Session"


def test_the_oldest_writers_are_forgotten_first():
    writes = OwnWrites(max_writers=2)
    writes.wrote("a", "c", now=0.0)
    writes.wrote("b", "c", now=1.0)
    writes.wrote("a", "c", now=2.0)  # a is the newest again
    writes.wrote("d", "c", now=3.0)
    assert [writes.level(caller, "c", "", now=4.0) for caller in "abd"] == ["Session", "Eventually", "Session"]
