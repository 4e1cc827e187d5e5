"""The FiftyOne App's similarity search with `backend="lookalike"` (issue 26, trap 7).

The App server runs in its own process, registered by the environment that `lookalike fiftyone-register
--print-env` prints, and is sent the request the App's similarity search panel sends when a user picks the brain
key and searches: POST /operators/execute for `@voxel51/panels/similarity_search` (FiftyOne 1.22's panel; the
operator calls `sort_by_similarity` in the App server and keeps the ordered ids in the execution store, which the
App then shows). No browser is needed; docs/fiftyone_app_screenshot.py takes the picture in docs/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo
import fiftyone.brain as fob
import pytest

from tests.conftest import ServerProcess
from tests.fiftyone.app_panel import panel_search
from tests.fiftyone.conftest import app_server


@pytest.fixture(scope="module")
def app_url(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The App server, as `fo.launch_app(remote=True)` starts it, registered with the lookalike server."""
    with app_server(server.address, tmp_path_factory.mktemp("app")) as url:
        yield url


@pytest.fixture(scope="module")
def app_index(photos_dataset: fo.Dataset, server: ServerProcess) -> Iterator[str]:
    index = fob.compute_similarity(photos_dataset, brain_key="app_sim", backend="lookalike", server=server.address)
    yield "app_sim"
    index.cleanup()
    photos_dataset.delete_brain_run("app_sim")


def test_app_similarity_search_orders_as_sort_by_similarity(
    app_url: str, app_index: str, photos_dataset: fo.Dataset, photos_dir: Path
) -> None:
    """By a selected sample, and the least similar first: the App's order is sort_by_similarity's."""
    chelsea = photos_dataset.match(fo.ViewField("filepath").ends_with("chelsea.jpg")).first().id
    for reverse in (False, True):
        run = panel_search(app_url, photos_dataset, {
            "brain_key": app_index, "query_type": "image", "query": [chelsea], "k": 6, "reverse": reverse})
        assert run["status"] == "completed", run.get("status_details")
        expected = photos_dataset.sort_by_similarity(chelsea, brain_key=app_index, k=6, reverse=reverse).values("id")
        assert run["result_ids"] == expected
        assert len(set(expected)) == 6 and (expected[0] == chelsea) != reverse


def test_app_reports_the_backends_refusal(app_url: str, app_index: str, photos_dataset: fo.Dataset) -> None:
    """A text prompt to a model with no text tower: the run fails with the server's reason, not silently."""
    run = panel_search(app_url, photos_dataset, {"brain_key": app_index, "query_type": "text", "query": "a cat",
                                                  "k": 3})
    if run["status"] == "completed":  # a server whose model has a text tower answers it
        assert len(run["result_ids"]) == 3
    else:
        assert run["status"] == "failed" and "text" in run["status_details"]
