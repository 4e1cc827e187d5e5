"""Talking to the FiftyOne App server as its similarity search panel does (POST /operators/execute), for the
App tests (test_app.py, test_prompts.py)."""

from __future__ import annotations

import json
import urllib.request

import fiftyone as fo
from bson import ObjectId
from fiftyone.operators.store import ExecutionStore

SEARCH_OPERATOR = "@voxel51/panels/similarity_search"
PANEL_STORE = "similarity_search_panel"  # plugins/panels/similarity_search/constants.py: STORE_NAME


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


def panel_search(app_url: str, dataset: fo.Dataset, params: dict) -> dict:
    """What the App sends when the user runs a search in the similarity panel; returns the run it stored."""
    reply = post(f"{app_url}/operators/execute", {
        "operator_uri": SEARCH_OPERATOR, "dataset_name": dataset.name, "view": [], "filters": {},
        "selected": [], "selected_labels": [], "params": params,
    })
    store = ExecutionStore.create(PANEL_STORE, ObjectId(str(dataset._doc.id)))
    if reply.get("error") is None:
        return store.get(f"run:{reply['result']['run_id']}")
    # A failed search: the panel lists it as its newest run, with the reason.
    runs = [store.get(key) for key in store.list_keys() if key.startswith("run:")]
    return max(runs, key=lambda run: run["creation_time"])
