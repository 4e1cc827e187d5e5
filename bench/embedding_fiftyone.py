"""FiftyOne's own path, the baseline: compute_similarity with an ONNX-wrapping model, in a child process."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import CpuMeter, ManagedProcess, cores, free_port, log, stop_processes_under, wait_for_port
from embedding_common import _BENCH, VENV_BIN

WHY_NOT_TORCH = (
    "FiftyOne's Torch wrappers (fiftyone.utils.torch) need torchvision, and PyPI's torchvision does not import "
    "beside the CPU torch here ('operator torchvision::nms does not exist'); and where both ran (ENVIRONMENT.md) "
    "the uncompiled Torch network was about 5x slower than ONNX Runtime (19-41 vs 83-87 img/s end to end). "
    "So the faster of FiftyOne's two ways is a fiftyone.core.models.Model + EmbeddingsMixin that wraps the same "
    "ONNX file with the same preprocessing, run on batches with all cores."
)


def _fiftyone_model(card: Any, threads: int) -> Any:
    """A FiftyOne image model that runs the card's ONNX file on batches (all cores) with the card's preprocessing."""
    import fiftyone.core.models as fom
    import onnxruntime as ort
    from PIL import Image

    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}[card.interpolation]
    mean = np.asarray(card.mean, dtype=np.float32)
    std = np.asarray(card.std, dtype=np.float32)

    class OnnxEmbeddingModel(fom.Model, fom.EmbeddingsMixin):
        """What a FiftyOne user writes to embed with an ONNX file: preprocess each array, run the batch."""

        def __init__(self) -> None:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            providers = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]
            self.session = ort.InferenceSession(str(card.model_path), options,
                                                providers=[*providers, "CPUExecutionProvider"])
            self._preprocess = True
            self.preprocess_s = 0.0
            self.network_s = 0.0
            self.images = 0

        @property
        def media_type(self) -> str:
            return "image"

        @property
        def ragged_batches(self) -> bool:
            return False

        @property
        def transforms(self) -> None:
            return None

        @property
        def preprocess(self) -> bool:
            return self._preprocess

        @preprocess.setter
        def preprocess(self, value: bool) -> None:
            self._preprocess = value

        @property
        def has_embeddings(self) -> bool:
            return True

        def _tensor(self, arr: np.ndarray) -> np.ndarray:
            img = Image.fromarray(arr).convert("RGB")
            if card.resize == "stretch":
                img = img.resize((card.width, card.height), resample)
            else:
                scale = card.resize_to / min(img.width, img.height)
                size = (max(card.width, round(img.width * scale)), max(card.height, round(img.height * scale)))
                img = img.resize(size, resample)
                left, top = (img.width - card.width) // 2, (img.height - card.height) // 2
                img = img.crop((left, top, left + card.width, top + card.height))
            pixels = (np.asarray(img, dtype=np.float32) - mean) / std
            return pixels.transpose(2, 0, 1)

        def embed_all(self, args: Any) -> np.ndarray:
            t0 = time.perf_counter()
            batch = np.ascontiguousarray(np.stack([self._tensor(a) for a in args]), dtype=np.float32)
            t1 = time.perf_counter()
            (out,) = self.session.run([card.output_name], {card.input_name: batch})
            self.preprocess_s += t1 - t0
            self.network_s += time.perf_counter() - t1
            self.images += len(batch)
            return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)

        def embed(self, arg: Any) -> np.ndarray:
            return self.embed_all([arg])[0]

        def predict(self, arg: Any) -> np.ndarray:
            return self.embed(arg)

        def predict_all(self, args: Any) -> np.ndarray:
            return self.embed_all(args)

    return OnnxEmbeddingModel()


def fiftyone_worker(args: argparse.Namespace) -> None:
    """In a child process: dataset of file paths, then compute_similarity with the Milvus backend; JSON on stdout."""
    import fiftyone as fo
    import fiftyone.brain as fob

    from lookalike_server.model_card import load_model_card

    files = [Path(line) for line in Path(args.files).read_text().splitlines() if line]
    card = load_model_card()
    model = _fiftyone_model(card, cores())
    t0 = time.monotonic()
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in files])
    t1 = time.monotonic()
    with CpuMeter(args.milvus_pid) as meter:
        results = fob.compute_similarity(
            dataset, model=model, backend="milvus", uri=args.fiftyone_uri, brain_key="bench",
            batch_size=args.fiftyone_batch_size, progress=False,
        )
    t2 = time.monotonic()
    rows = results.total_index_size
    hits = dataset.sort_by_similarity(dataset.first().id, brain_key="bench", k=3)  # the index answers
    answered = len(hits)
    results.cleanup()
    dataset.delete_brain_run("bench")
    dataset.delete()
    try:
        import torchvision  # noqa: F401

        torch_note = "torchvision imports here; the ONNX-wrapping model was still used (see why_onnx)"
    except Exception as e:  # any import failure is the fact being reported
        torch_note = f"import torchvision fails here: {type(e).__name__}: {str(e)[:200]}"
    seconds = t2 - t1
    network, preprocess = model.network_s, model.preprocess_s
    print(json.dumps({
        "images_per_s": round(len(files) / seconds, 1),
        "seconds": round(seconds, 2),
        "dataset_creation_s": round(t1 - t0, 2),
        "index_rows": rows,
        "query_answered": answered == 3,
        "model": "fiftyone.core.models.Model + EmbeddingsMixin wrapping the same ONNX file, same preprocessing, "
                 f"onnxruntime {model.session.get_providers()[0]} with {cores()} threads, batches of "
                 f"{args.fiftyone_batch_size}",
        "reader": "FiftyOne's own (fiftyone.utils.image.read, OpenCV), one image at a time in the main thread",
        "why_onnx": WHY_NOT_TORCH,
        "torchvision": torch_note,
        "breakdown_s": {
            "network": round(network, 2),
            "preprocess_from_array": round(preprocess, 2),
            "jpeg_read_mongo_milvus_rest": round(seconds - network - preprocess, 2),
        },
        # this_process: FiftyOne's Python process; watched_process: milvus-lite server; other: mongod and the rest
        "cpu": meter.result,
        "fiftyone": fo.__version__,
        "fiftyone_brain": importlib.metadata.version("fiftyone-brain"),
    }))


def bench_fiftyone(files: list[Path], batch_size: int, args: argparse.Namespace, work: Path) -> dict:
    """Starts `milvus-lite server` and runs fiftyone_worker in a child with a temp database; stops both after."""
    port = free_port()
    milvus = [str(VENV_BIN / "milvus-lite"), "server", "--data-dir", str(work / "milvus-lite"),
              "--host", "127.0.0.1", "--port", str(port)]
    list_file = work / "files.txt"
    list_file.write_text("\n".join(str(p) for p in files))
    db_dir = work / "fiftyone-db"
    env = {
        **os.environ,
        "FIFTYONE_DATABASE_DIR": str(db_dir),
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_SHOW_PROGRESS_BARS": "false",
        "FIFTYONE_DATASET_ZOO_DIR": str(work / "fiftyone-zoo"),
        "FIFTYONE_MODEL_ZOO_DIR": str(work / "fiftyone-models"),
    }
    worker = [sys.executable, str(_BENCH / "embedding.py"), "--fiftyone-worker", "--files", str(list_file),
              "--fiftyone-uri", f"http://127.0.0.1:{port}", "--fiftyone-batch-size", str(batch_size)]
    try:
        with ManagedProcess(milvus, work / "milvus-lite.log") as server:
            wait_for_port(port, server, 120)
            log(f"fiftyone_baseline: milvus-lite server on port {port}, batch size {batch_size}")
            worker += ["--milvus-pid", str(server.pid)]
            try:
                done = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=args.stage_timeout,
                                      check=False, start_new_session=True)
            except subprocess.TimeoutExpired as e:
                raise TimeoutError(f"the FiftyOne baseline did not finish within {args.stage_timeout:.0f} s") from e
            (work / "fiftyone.log").write_text(done.stderr)
            if done.returncode != 0:
                raise RuntimeError(f"the FiftyOne baseline failed ({done.returncode}):\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        leftovers = stop_processes_under(str(db_dir))  # mongod outliving its Python parent
        if leftovers:
            log(f"stopped leftover FiftyOne processes {leftovers}")
    log(f"fiftyone_baseline: {result['images_per_s']} img/s ({result['seconds']} s)")
    return result
