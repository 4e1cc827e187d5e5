"""The FiftyOne backend run beside FiftyOne's own backends on the same embeddings: duplicates and unique samples
as the sklearn backend finds them, and search as FiftyOne's Milvus backend on `milvus-lite server` answers it
(with a FLAT index, so both are exact), and the collection names of both backends on one shared Milvus.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest
from fiftyone.brain.internal.core.milvus import MilvusSimilarity, MilvusSimilarityConfig

from tests.conftest import ServerProcess
from tests.fiftyone.oracle import DIM, exact_top, unit

# Duplicates: FiftyOne's algorithm over neighbour searches done by the server, against the sklearn backend


@pytest.fixture
def duplicates_data() -> Iterator[tuple[fo.Dataset, np.ndarray]]:
    """150 samples: 120 spread-out vectors and 30 close copies of some of them (cosine distance < 0.01)."""
    rng = np.random.default_rng(11)
    basis = unit(rng.standard_normal((16, DIM)))
    spread = unit(rng.standard_normal((120, 16)) @ basis)
    copies = unit(spread[rng.choice(120, 30, replace=False)] + 0.05 * unit(rng.standard_normal((30, DIM))))
    embeddings = np.concatenate([spread, copies]).astype(np.float32)[rng.permutation(150)]
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{n:03d}.jpg") for n in range(150)])
    yield ds, embeddings
    ds.delete()


def test_duplicates_and_unique_match_fiftyone_sklearn(
    duplicates_data: tuple[fo.Dataset, np.ndarray], server: ServerProcess
) -> None:
    ds, embeddings = duplicates_data
    ids = ds.values("id")
    ours = fob.compute_similarity(
        ds, embeddings=embeddings, brain_key="dups", backend="lookalike", server=server.address
    )
    theirs = fob.compute_similarity(ds, embeddings=embeddings, brain_key="sk", backend="sklearn", metric="cosine")
    try:
        for index in (ours, theirs):
            index.find_duplicates(thresh=0.02)
        assert len(ours.duplicate_ids) >= 25
        assert sorted(ours.duplicate_ids) == sorted(theirs.duplicate_ids)
        assert sorted(ours.unique_ids) == sorted(theirs.unique_ids)
        assert ours.neighbors_map.keys() == theirs.neighbors_map.keys()
        for key, dups in ours.neighbors_map.items():
            # The same duplicates in the same order; sklearn's distances are Euclidean on unit vectors here.
            assert [d for d, _ in dups] == [d for d, _ in theirs.neighbors_map[key]]
            cosine = [1 - float(unit(embeddings[ids.index(key)]) @ unit(embeddings[ids.index(d)])) for d, _ in dups]
            np.testing.assert_allclose([x for _, x in dups], cosine, atol=1e-5)

        view = ours.duplicates_view(type_field="dup_type", dist_field="dup_dist")
        assert set(view.values("id")) == set(ours.duplicate_ids) | set(ours.neighbors_map)
        assert sorted(view.values("dup_type")) == sorted(
            ["duplicate"] * len(ours.duplicate_ids) + ["nearest"] * len(ours.neighbors_map)
        )
        assert sorted(ours.unique_view().values("id")) == sorted(ours.unique_ids)

        ours.find_unique(60)
        unique = [ids.index(i) for i in ours.unique_ids]
        assert abs(len(unique) - 60) <= 2  # FiftyOne's threshold search may not hit the count exactly
        distances = 1 - unit(embeddings[unique]) @ unit(embeddings[unique]).T
        np.fill_diagonal(distances, np.inf)
        assert distances.min() > ours.thresh - 1e-5  # no two kept samples within the threshold
        assert sorted(ours.unique_view().values("id")) == sorted(ours.unique_ids)

        with ours.use_view(ds.limit(100)):
            ours.find_duplicates(thresh=0.02)
            assert ours.duplicate_ids
            assert set(ours.duplicate_ids) | set(ours.unique_ids) == set(ids[:100])
    finally:
        ours.cleanup()


# Parity with FiftyOne's own Milvus backend on the same Milvus engine


class FlatMilvusSimilarityConfig(MilvusSimilarityConfig):
    """FiftyOne's Milvus backend with a FLAT index: its exact results, to compare ours with."""

    @property
    def index_params(self) -> dict:
        return {"metric_type": "IP", "index_type": "FLAT", "params": {}}

    @property
    def search_params(self) -> dict:
        return {"metric_type": "IP", "params": {}}


class FlatMilvusSimilarity(MilvusSimilarity):
    pass


@pytest.mark.filterwarnings("ignore:.*is an ORM-style PyMilvus API:FutureWarning")  # in FiftyOne's backend
def test_same_results_as_fiftyone_milvus_backend(
    vectors_dataset: fo.Dataset, server: ServerProcess, milvus_lite_uri: str
) -> None:
    ds = vectors_dataset
    ids = ds.values("id")
    embeddings = np.random.default_rng(5).standard_normal((300, DIM)).astype(np.float32)
    ours = fob.compute_similarity(
        ds, embeddings=embeddings, brain_key="ours", backend="lookalike", metric="dotproduct", server=server.address
    )
    theirs = fob.compute_similarity(
        ds, embeddings=embeddings, brain_key="milvus", backend=FlatMilvusSimilarityConfig, metric="dotproduct",
        uri=milvus_lite_uri,
    )
    try:
        for query in ids[:20]:
            a = ds.sort_by_similarity(query, brain_key="ours", k=10, dist_field="d_ours")
            b = ds.sort_by_similarity(query, brain_key="milvus", k=10, dist_field="d_milvus")
            assert a.values("id") == b.values("id") == exact_top(embeddings, ids, embeddings[ids.index(query)], 10)
            np.testing.assert_allclose(a.values("d_ours"), b.values("d_milvus"), rtol=1e-4)
    finally:
        ours.cleanup()
        theirs.cleanup()


@pytest.fixture
def shared_milvus_server(milvus_lite_uri: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A lookalike server over the `milvus-lite server` that FiftyOne's Milvus backend uses too."""
    proc = ServerProcess(tmp_path / "serve", "--milvus-uri", milvus_lite_uri)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.mark.filterwarnings("ignore:.*is an ORM-style PyMilvus API:FutureWarning")  # in FiftyOne's backend
def test_collection_names_do_not_clash_with_fiftyone_milvus_backend(
    vectors_dataset: fo.Dataset, shared_milvus_server: ServerProcess, milvus_lite_uri: str
) -> None:
    """One Milvus, both backends, one dataset: FiftyOne's names its collection `fiftyone_<dataset>`, ours take a
    lookalike prefix, and a name Milvus holds outside lookalike (hidden from lookalike's listing) is never used."""
    ds = vectors_dataset
    ds.name = "shared-milvus"
    embeddings = unit(np.random.default_rng(6).standard_normal((300, DIM))).astype(np.float32)
    ids = ds.values("id")
    theirs = fob.compute_similarity(ds, embeddings=embeddings, brain_key="milvus", backend="milvus",
                                    uri=milvus_lite_uri)
    squatter = fob.compute_similarity(ds, embeddings=embeddings[:, :64], brain_key="squatter", backend="milvus",
                                      uri=milvus_lite_uri, collection_name="lookalike_fiftyone_shared_milvus")
    server = shared_milvus_server.address
    ours = fob.compute_similarity(ds, embeddings=embeddings, brain_key="ours", backend="lookalike", server=server)
    again = None
    try:
        assert theirs.config.collection_name == "fiftyone_shared_milvus"
        assert ours.config.collection_name == "lookalike_fiftyone_shared_milvus_2"
        assert ds.get_brain_info("ours").config.collection_name == "lookalike_fiftyone_shared_milvus_2"
        assert ours.total_index_size == theirs.total_index_size == 300
        query = ids[7]
        expected = exact_top(embeddings, ids, embeddings[7], 5)
        assert ds.sort_by_similarity(query, brain_key="ours", k=5).values("id") == expected
        assert ds.sort_by_similarity(query, brain_key="milvus", k=5).values("id")[0] == query
        assert squatter.total_index_size == 300  # untouched

        # A run that recorded a name keeps it (loaded, or one chosen by an earlier version of this backend).
        loaded = ds.load_brain_results("ours", cache=False)
        assert loaded.config.collection_name == "lookalike_fiftyone_shared_milvus_2"
        again = fob.compute_similarity(ds, embeddings=embeddings, brain_key="again", backend="lookalike",
                                       server=server)
        assert again.config.collection_name == "lookalike_fiftyone_shared_milvus_3"
        # A name the user gives that Milvus holds outside lookalike: a clear error, nothing renamed.
        with pytest.raises(ValueError, match=r"'fiftyone_shared_milvus' already exists.*lookalike did not create"):
            fob.compute_similarity(ds, embeddings=embeddings, brain_key="given", backend="lookalike", server=server,
                                   collection_name="fiftyone_shared_milvus")
        assert theirs.total_index_size == 300
    finally:
        for index in (ours, again, theirs, squatter):
            if index is not None:
                index.cleanup()
