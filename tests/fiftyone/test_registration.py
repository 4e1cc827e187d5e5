"""How the FiftyOne backend reaches its server and how FiftyOne finds the backend: token and TLS settings, a
run loaded while no server answers; `register()` merging with a brain config, the autoload module, registration
by environment variables and by config file (in new processes), the environment that `lookalike
fiftyone-register --print-env` prints, and the seed's recipe with no import and no model.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest

from lookalike.fiftyone_brain import LookalikeSimilarityConfig
from lookalike.fiftyone_registration import CONFIG_CLS, register
from tests.conftest import ServerProcess, free_port
from tests.fiftyone.conftest import run_python
from tests.fiftyone.oracle import DIM

# Connection settings


def test_token_and_tls_settings(vectors_dataset: fo.Dataset, server: ServerProcess, tmp_path: Path) -> None:
    embeddings = np.random.default_rng(2).standard_normal((300, DIM)).astype(np.float32)
    with_token = fob.compute_similarity(vectors_dataset, embeddings=embeddings, backend="lookalike",
                                        server=server.address, token="s3cret")
    try:
        assert with_token.config.token == "s3cret"
        assert "s3cret" not in json.dumps(with_token.config.serialize())  # never written to the database
        assert with_token.sort_by_similarity(vectors_dataset.first().id, k=3).count() == 3
    finally:
        with_token.cleanup()
    with pytest.raises(ConnectionError, match=server.address):  # TLS to a plaintext server
        fob.compute_similarity(vectors_dataset, embeddings=embeddings, backend="lookalike",
                               server=server.address, secure=True)
    with pytest.raises(ValueError, match="Unsupported metric"):
        LookalikeSimilarityConfig(metric="manhattan")


def test_loading_without_a_server_fails_at_load(vectors_dataset: fo.Dataset, server: ServerProcess) -> None:
    """As FiftyOne's Milvus backend fails when it connects: at load_brain_results, naming the address and the fix,
    not at the first search with a bare ConnectionError."""
    embeddings = np.random.default_rng(4).standard_normal((300, DIM)).astype(np.float32)
    index = fob.compute_similarity(vectors_dataset, embeddings=embeddings, brain_key="gone", backend="lookalike",
                                   server=server.address)
    nobody = f"127.0.0.1:{free_port()}"
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError) as caught:
            vectors_dataset.load_brain_results("gone", cache=False, server=nobody)
        assert time.monotonic() - started < 15
        message = str(caught.value)
        assert f"no lookalike server answers at {nobody} (brain run 'gone')" in message
        assert "`lookalike serve`" in message and "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER" in message
        assert "--server" not in message  # the CLI's advice, not a FiftyOne user's
        again = vectors_dataset.load_brain_results("gone", cache=False, server=server.address)
        assert again.total_index_size == 300
    finally:
        index.cleanup()
        vectors_dataset.delete_brain_run("gone")


# Registration


def test_register_merges_with_an_existing_brain_config(tmp_path: Path) -> None:
    path = tmp_path / "fiftyone" / "brain_config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({
        "default_similarity_backend": "sklearn",
        "similarity_backends": {"qdrant": {"url": "http://q:6333"}, "lookalike": {"server": "gpu-box:50051"}},
    }))

    assert register(path) == path
    assert register(path, make_default=True) == path

    assert json.loads(path.read_text()) == {
        "default_similarity_backend": "lookalike",
        "similarity_backends": {
            "qdrant": {"url": "http://q:6333"},
            "lookalike": {"server": "gpu-box:50051", "config_cls": CONFIG_CLS},
        },
    }
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        register(broken)
    assert broken.read_text() == "{not json"


def test_registering_again_with_the_autoload_in_place(tmp_path: Path) -> None:
    """Registration imported first (as `lookalike fiftyone-register` does) while FiftyOne's config already loads
    the autoload module: the backend it imports on the way imports the registration module back, complete."""
    out = run_python(
        "import json, sys\n"
        "import lookalike.fiftyone_registration as registration\n"
        f"registration.register({str(tmp_path / 'brain_config.json')!r})\n"
        "import fiftyone.brain.similarity as fbs\n"
        "print(json.dumps({'backend': 'lookalike.fiftyone_brain' in sys.modules,\n"
        "    'patched': getattr(fbs.compute_similarity, '_lookalike', False)}))\n",
        env={"FIFTYONE_MODULE_PATH": "lookalike.fiftyone_autoload"},
    )
    assert json.loads(out.strip().splitlines()[-1]) == {"backend": True, "patched": True}
    assert json.loads((tmp_path / "brain_config.json").read_text())["similarity_backends"]["lookalike"] == {
        "config_cls": CONFIG_CLS}


CHILD_COMPUTE = (
    "import sys, json, numpy as np, fiftyone as fo, fiftyone.brain as fob\n"
    "ds = fo.Dataset()\n"
    "ds.add_samples([fo.Sample(filepath=f'/nonexistent/{n}.jpg') for n in range(50)])\n"
    "imported = 'lookalike.fiftyone_brain' in sys.modules\n"
    "index = fob.compute_similarity(ds, embeddings=np.eye(50, 1280, dtype=np.float32), brain_key='k')\n"
    "top = ds.sort_by_similarity(ds.first().id, brain_key='k', k=1).values('id')\n"
    "print(json.dumps({'imported_before': imported, 'cls': type(index).__name__, 'server': index.config.server,\n"
    "    'size': index.total_index_size, 'top': top == [ds.first().id]}))\n"
    "index.cleanup()\n"
)


def test_registration_by_environment_and_by_config_file(server: ServerProcess, tmp_path: Path) -> None:
    expected = {"imported_before": False, "cls": "LookalikeSimilarityIndex", "server": server.address, "size": 50,
                "top": True}
    by_env = run_python(CHILD_COMPUTE, env={
        "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": "*,lookalike",
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS": CONFIG_CLS,
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER": server.address,
        "FIFTYONE_BRAIN_DEFAULT_SIMILARITY_BACKEND": "lookalike",
    })
    assert json.loads(by_env.strip().splitlines()[-1]) == expected

    config = register(tmp_path / "brain_config.json", server=server.address, make_default=True)
    by_file = run_python(CHILD_COMPUTE, env={"FIFTYONE_BRAIN_CONFIG_PATH": str(config)})
    assert json.loads(by_file.strip().splitlines()[-1]) == expected


CHILD_ENV_ONLY = (
    "import json, os, sys, numpy as np, fiftyone as fo, fiftyone.brain as fob, fiftyone.core.models as fom\n"
    "import fiftyone.zoo as foz\n"
    "from lookalike import Client\n"
    "class StandIn(fom.Model, fom.EmbeddingsMixin):\n"
    "    # FiftyOne's default zoo model as it would run here with torch: 1280-d vectors computed locally\n"
    "    media_type, ragged_batches, transforms, preprocess, has_embeddings = 'image', False, None, False, True\n"
    "    def predict(self, arg): raise NotImplementedError\n"
    "    def embed(self, arg): return np.full(1280, float(np.asarray(arg).mean()), np.float32)\n"
    "    def embed_all(self, args): return np.stack([self.embed(a) for a in args])\n"
    "loaded = []\n"
    "foz.load_zoo_model = lambda name, **kwargs: loaded.append(name) or StandIn()\n"
    "ds = fo.load_dataset('lookalike-photos')\n"
    "client = Client(os.environ['FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER'])\n"
    "before = sorted(c.name for c in client.list_collections())\n"
    "imported = 'lookalike.fiftyone_brain' in sys.modules\n"
    "try:\n"
    "    fob.compute_similarity(ds, brain_key='env_only', backend='lookalike')\n"
    "    error = None\n"
    "except ValueError as e:\n"
    "    error = str(e)\n"
    "after = sorted(c.name for c in client.list_collections())\n"
    "registered = 'env_only' in ds.list_brain_runs()\n"
    "index = fob.compute_similarity(ds, brain_key='env_only', backend='lookalike')  # again: the server embeds\n"
    "stored, _, _ = index.get_embeddings([ds.first().id])\n"
    "server = client.embed([ds.first().filepath])[0]\n"
    "print(json.dumps({'imported_before': imported, 'error': error, 'same_collections': before == after,\n"
    "    'registered': registered, 'loaded': loaded, 'size': index.total_index_size, 'model': index.config.model,\n"
    "    'server_vectors': bool(np.allclose(stored[0], server, atol=1e-5))}))\n"
    "index.cleanup(); ds.delete_brain_run('env_only')\n"
)


def test_registration_by_environment_alone_never_stores_fiftyones_default_model(
    server: ServerProcess, photos_dataset: fo.Dataset
) -> None:
    """Trap: registered by environment variables alone (no FIFTYONE_MODULE_PATH), compute_similarity with no
    model gets FiftyOne's default zoo model, loaded before the backend is imported (a stand-in here: no network).
    The backend stops before any brain run or collection exists, says why and the line that fixes it; in that
    process the backend is loaded by then, so the same call again embeds on the server."""
    out = run_python(CHILD_ENV_ONLY, env={
        "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": "*,lookalike",
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS": CONFIG_CLS,
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER": server.address,
    })
    child = json.loads(out.strip().splitlines()[-1])
    error = child.pop("error")
    assert child == {"imported_before": False, "same_collections": True, "registered": False,
                     "loaded": ["mobilenet-v2-imagenet-torch"], "size": 19, "model": None, "server_vectors": True}
    assert error is not None
    assert "FiftyOne loaded its default model 'mobilenet-v2-imagenet-torch'" in error
    assert "FIFTYONE_MODULE_PATH=lookalike.fiftyone_autoload" in error
    assert "model='mobilenet-v2-imagenet-torch'" in error


def test_printed_environment_runs_the_milvus_guide(server: ServerProcess, photos_dataset: fo.Dataset) -> None:
    """`lookalike fiftyone-register --print-env` gives the environment route whole; with it, Milvus' guide runs
    as written with only the backend's name changed, no lookalike import and no model."""
    printed = subprocess.run(
        [sys.executable, "-m", "lookalike.cli", "fiftyone-register", "--print-env", "--server", server.address],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in printed.splitlines())
    assert env == {
        "FIFTYONE_MODULE_PATH": "lookalike.fiftyone_autoload",
        "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": "*,lookalike",
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS": CONFIG_CLS,
        "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER": server.address,
    }
    out = run_python(
        "import json, fiftyone as fo, fiftyone.brain as fob\n"
        "dataset = fo.load_dataset('lookalike-photos')\n"
        "milvus_index = fob.compute_similarity(dataset, brain_key='milvus_index', backend='lookalike')\n"
        "query = dataset.first().id\n"
        "view = dataset.sort_by_similarity(query, brain_key='milvus_index', k=10)\n"
        "result = {'first': view.first().id == query, 'len': len(view), 'size': milvus_index.total_index_size,\n"
        "    'server_model': milvus_index.config.server_model}\n"
        "milvus_index.delete()\n"
        "dataset.delete_brain_run('milvus_index')\n"
        "result['after'] = milvus_index.total_index_size\n"
        "print(json.dumps(result))\n",
        env=env,
    )
    assert json.loads(out.strip().splitlines()[-1]) == {
        "first": True, "len": 10, "size": 19, "server_model": "efficientnet-lite0", "after": 0}


@pytest.mark.skipif(
    importlib.util.find_spec("lookalike.fiftyone_autoload") is None,
    reason="lookalike.fiftyone_autoload is not in the package yet",
)
def test_recipe_with_no_import_and_no_model(server: ServerProcess, photos_dataset: fo.Dataset) -> None:
    """The seed's lines exactly: FiftyOne loads the backend at start-up (its config's module_path)."""
    out = run_python(
        "import json, fiftyone as fo, fiftyone.brain as fob\n"
        "ds = fo.load_dataset('lookalike-photos')\n"
        "fob.compute_similarity(ds, brain_key='no_import', backend='lookalike')\n"
        "view = ds.sort_by_similarity(ds.first().id, brain_key='no_import', k=10)\n"
        "index = ds.load_brain_results('no_import')\n"
        "print(json.dumps({'first': view.first().id == ds.first().id, 'size': index.total_index_size}))\n"
        "index.cleanup(); ds.delete_brain_run('no_import')\n",
        env={
            "FIFTYONE_MODULE_PATH": "lookalike.fiftyone_autoload",
            "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": "*,lookalike",
            "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS": CONFIG_CLS,
            "FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_SERVER": server.address,
        },
    )
    assert json.loads(out.strip().splitlines()[-1]) == {"first": True, "size": 19}
