"""Every id that Ingest acknowledges can be read, searched by and deleted, on Milvus Lite and on a Milvus server
(issue 23): newlines, carriage returns and backslashes in ids once made rows that could never be read or removed.

The property test's examples are bounded for the default suite; LOOKALIKE_ID_EXAMPLES=500 runs a longer profile.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lookalike import ById, Client
from tests.conftest import ServerProcess

DIM = 4
SPECIAL = ["\\", '"', "'", "\n", "\r", "\t", "\x00", "\x07", "\x1b", "\x7f", "[", "]", "(", ")", " or ", " and ",
           "!=", "\u2028", "\U0001f600", "\\n", "\\x41", "\\u0041", "$", "{ids}"]
# The issue's table, and attempts to widen a delete through an id.
TABLE = ["a\nb", "cr\rx", "back\\slash", "tab\tx", 'q"uote', "nul\x00x", "emoji\U0001f600", "trail\\",
         'x" or id != "', 'x"] or id != ["', "x') or (id != 'x", "\\\"", "\n", "\\"]


@pytest.fixture(scope="module", params=["lite", pytest.param("standalone", marks=pytest.mark.standalone)])
def server(request, tmp_path_factory):
    args = ("--milvus-uri", request.getfixturevalue("milvus_standalone_uri")) if request.param == "standalone" else ()
    proc = ServerProcess(tmp_path_factory.mktemp(f"ids-{request.param}"), *args)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def ids_collection(server):
    with Client(server.address) as client:
        client.create_collection("odd_ids", "ip", "FLAT", dimension=DIM)
        yield client, "odd_ids"
        client.drop_collection("odd_ids")


def _round_trip(client: Client, name: str, ids: list[str]) -> None:
    """Ingest, then Get, Search by id, restrict_ids and Delete each id; a delete removes that row alone."""
    rng = np.random.default_rng(len(ids))
    vectors = {i: rng.standard_normal(DIM).astype(np.float32) for i in ids}
    bystander = "bystander"
    results = list(client.ingest([(bystander, np.ones(DIM, dtype=np.float32)), *list(vectors.items())],
                                 collection=name))
    assert [(r.id, r.ok, r.message) for r in results if not r.ok] == []
    assert set(client.get(ids, collection=name)) == set(ids)
    for i in ids:
        assert i in [h.id for h in client.search(ById(i), k=len(ids) + 1, collection=name)]
        assert [h.id for h in client.search(vectors[i], k=3, collection=name, restrict_ids=[i])] == [i]
    for n, i in enumerate(ids):
        assert client.delete([i], collection=name) == 1, repr(i)
        assert client.get([i], collection=name) == {}
        left = set(client.get([*ids[n + 1:], bystander], collection=name))
        assert left == set(ids[n + 1 :]) | {bystander}, repr(i)
    assert client.delete([bystander], collection=name) == 1


def test_the_issues_table_round_trips(ids_collection):
    client, name = ids_collection
    _round_trip(client, name, TABLE)


def _ids() -> st.SearchStrategy[list[str]]:
    odd = st.lists(st.sampled_from(SPECIAL + list("ab")), min_size=1, max_size=12).map("".join)
    anything = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=512)
    one = st.one_of(odd, anything).filter(lambda i: len(i.encode()) <= 512 and i != "bystander")
    return st.lists(one, min_size=1, max_size=4, unique=True)


@settings(max_examples=int(os.environ.get("LOOKALIKE_ID_EXAMPLES", "8")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ids=_ids())
def test_any_acknowledged_id_can_be_read_searched_by_and_deleted(ids_collection, ids):
    client, name = ids_collection
    _round_trip(client, name, ids)


def test_an_id_over_512_bytes_is_refused_at_ingest(ids_collection):
    client, name = ids_collection
    [result] = client.ingest([("\U0001f600" * 129, np.ones(DIM, dtype=np.float32))], collection=name)
    assert result.code == "INVALID_ARGUMENT" and "516 bytes" in result.message


