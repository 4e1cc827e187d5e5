"""Text prompts in FiftyOne with `backend="lookalike"` (issue 27): a run embedded by a server whose model has a
text tower (the tiny two-tower card) records `supports_prompts=True`, and `sort_by_similarity("a red car")`, in
Python and in the App server, is answered by the server: the same ids in the same order as `Client.search(Text)`
against the run's collection. With the default model (no text tower) the run says False and a prompt is refused
with the server's reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest

from lookalike import Client, Text, Texts
from lookalike.fiftyone_registration import environment
from lookalike_server.testing.tiny_clip import write_tiny_clip
from tests.conftest import ServerProcess
from tests.fiftyone.app_panel import panel_search, post
from tests.fiftyone.conftest import app_server, run_python

PROMPT = "a red car"
PROMPTS = ["a red car", "a kite high in the sky", "coffee"]


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`lookalike serve --model-card` with the tiny two-tower card (random vectors, a real tokenizer)."""
    card = write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    proc = ServerProcess(tmp_path_factory.mktemp("text-server"), "--model-card", str(card))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def prompts_dataset(photos_dir: Path, text_server: ServerProcess) -> Iterator[fo.Dataset]:
    """A persistent dataset (the App server loads it by name) with two runs: "text", embedded by the tiny card's
    server, and "vectors", vectors-only, which cannot take prompts (so the stage must pick "text" by itself)."""
    dataset = fo.Dataset("lookalike-prompts", overwrite=True, persistent=True)
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in sorted(photos_dir.iterdir())])
    text = fob.compute_similarity(dataset, brain_key="text", backend="lookalike", server=text_server.address)
    vectors = fob.compute_similarity(dataset, brain_key="vectors", backend="lookalike", server=text_server.address,
                                     embeddings=np.random.default_rng(0).normal(size=(len(dataset), 8)))
    yield dataset
    for index in (text, vectors):
        index.cleanup()
    dataset.delete()


def server_order(server: ServerProcess, dataset: fo.Dataset, query: Text | Texts, k: int) -> list[str]:
    """The run's collection searched by the lookalike client directly."""
    collection = dataset.get_brain_info("text").config.collection_name
    with Client(server.address) as client:
        hits = client.search(query, k=k, collection=collection)
    assert len(hits) == k
    return [h.id for h in hits]


def test_a_run_embedded_with_a_text_tower_supports_prompts(prompts_dataset: fo.Dataset) -> None:
    assert prompts_dataset.get_brain_info("text").config.supports_prompts is True
    assert not prompts_dataset.get_brain_info("vectors").config.supports_prompts
    assert prompts_dataset.list_brain_runs(type=fob.Similarity, supports_prompts=True) == ["text"]
    assert prompts_dataset.load_brain_results("text").supports_prompts


def test_sort_by_a_prompt_gives_the_servers_order(text_server: ServerProcess, prompts_dataset: fo.Dataset) -> None:
    expected = server_order(text_server, prompts_dataset, Text(PROMPT), 6)
    assert prompts_dataset.sort_by_similarity(PROMPT, brain_key="text", k=6).values("id") == expected
    # No brain_key: FiftyOne's stage picks the one run that supports prompts, as for its own backends.
    assert prompts_dataset.sort_by_similarity(PROMPT, k=6).values("id") == expected
    least = server_order(text_server, prompts_dataset, Text(PROMPT), len(prompts_dataset))[::-1][:3]
    assert prompts_dataset.sort_by_similarity(PROMPT, brain_key="text", k=3, reverse=True).values("id") == least


def test_several_prompts_are_searched_by_their_mean(text_server: ServerProcess, prompts_dataset: fo.Dataset) -> None:
    expected = server_order(text_server, prompts_dataset, Texts(PROMPTS), 5)
    assert prompts_dataset.sort_by_similarity(PROMPTS, brain_key="text", k=5).values("id") == expected
    # The mean is not any one prompt's answer here, so a backend searching only the first would fail.
    assert expected != server_order(text_server, prompts_dataset, Text(PROMPTS[0]), 5)


def test_a_new_process_loads_the_run_and_searches_by_prompt(text_server: ServerProcess,
                                                            prompts_dataset: fo.Dataset) -> None:
    out = run_python(
        "import json, fiftyone as fo\n"
        f"ds = fo.load_dataset({prompts_dataset.name!r})\n"
        "index = ds.load_brain_results('text')\n"
        f"print(json.dumps([index.supports_prompts, ds.sort_by_similarity({PROMPT!r}, k=4).values('id')]))\n",
        env=environment(server=text_server.address),
    )
    assert json.loads(out.strip().splitlines()[-1]) == [True, server_order(text_server, prompts_dataset,
                                                                           Text(PROMPT), 4)]


@pytest.fixture(scope="module")
def text_app_url(text_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The App server (`python -m fiftyone.server.main`) registered with the tiny card's lookalike server."""
    with app_server(text_server.address, tmp_path_factory.mktemp("text-app")) as url:
        yield url


def test_the_app_offers_text_search_and_answers_it_through_the_server(
    text_app_url: str, text_server: ServerProcess, prompts_dataset: fo.Dataset
) -> None:
    # The App's dataset query: `supportsPrompts` is what shows the text search box for a brain key.
    reply = post(f"{text_app_url}/graphql", {"query": "query Q($name: String!) { dataset(name: $name) { "
                                              "brainMethods { key config { supportsPrompts } } } }",
                                              "variables": {"name": prompts_dataset.name}})
    runs = {run["key"]: run["config"]["supportsPrompts"] for run in reply["data"]["dataset"]["brainMethods"]}
    assert runs == {"text": True, "vectors": False}
    # The similarity panel's search with the text box's query.
    expected = server_order(text_server, prompts_dataset, Text(PROMPT), 5)
    run = panel_search(text_app_url, prompts_dataset, {"brain_key": "text", "query_type": "text", "query": PROMPT,
                                                        "k": 5})
    assert run["status"] == "completed", run.get("status_details")
    assert run["result_ids"] == expected


def test_the_default_model_has_no_prompts_and_says_why(dataset: fo.Dataset, server: ServerProcess) -> None:
    index = fob.compute_similarity(dataset, brain_key="plain", backend="lookalike", server=server.address)
    try:
        assert dataset.get_brain_info("plain").config.supports_prompts is False
        assert not index.supports_prompts
        with pytest.raises(ValueError, match="no text tower") as refused:
            dataset.sort_by_similarity(PROMPT, brain_key="plain", k=3)
        assert server.address in str(refused.value)
        # Without a brain key FiftyOne's stage finds no run that takes prompts.
        with pytest.raises(ValueError, match="supports_prompts"):
            dataset.sort_by_similarity(PROMPT, k=3)
    finally:
        index.cleanup()
