"""What int8 costs in search quality: the int8 EfficientNet-Lite0 card against the float32 one.

Prints one JSON object. On labelled real images (Debian's dataset-fashion-mnist: the first --n images of its
test set, 10 classes, 28x28 greyscale, preprocessed as the server does), brute force over cosine similarity:

  precision_at_10   the share of each image's 10 nearest neighbours (itself left out) with its label,
                    float32 and each int8 model
  overlap_at_10     the share of float32's 10 nearest neighbours that int8 finds too, per image, averaged
  cosine            cosine(float32, int8) of each image's embedding: mean, 1st percentile, min
  test_photos       the same cosine on the test suite's photos (scikit-image's bundled photos, whole)

The same figures on two more sets (`other_sets`): scikit-image's lfw_subset (200 faces and non-faces, 25x25)
and 570 crops of scikit-image's photos (another seed than the calibration's; label: the source photo).
`noise_floor` says what an overlap means: float32 against float32 itself with input noise under one 8-bit
grey level (uniform +-0.5/255 of the range), and with isotropic noise added to the embeddings at the
shipped model's mean cosine.

The int8 models: the shipped card (models/efficientnet-lite0-int8), one per calibration method (--methods),
and one per choice of blocks left in float32 (`float_blocks`), each quantized here by that folder's
quantize.py with its default calibration set, so the recipe in the card is the one measured best.

Run (after `make setup`; `apt-get install dataset-fashion-mnist`; about five minutes on 2 cores):
    .venv/bin/python bench/quantization.py [--n 3000] [--methods MinMax,Percentile] [--write]
--write also saves the JSON to bench/results/quantization.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

_BENCH = Path(__file__).resolve().parent
# Python puts bench/ first on the path; last, a bench module named like a package (bench/fiftyone_backend.py was
# bench/fiftyone.py) cannot shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH] + [str(_BENCH)]
from common import cores, emit, log, machine_info  # noqa: E402

REPO = _BENCH.parent
INT8_CARD = REPO / "models" / "efficientnet-lite0-int8" / "card.toml"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
K = 10
TARGETS = {"precision_at_10_drop": 0.01, "overlap_at_10": 0.9}
CHUNK = 64  # images preprocessed at once (3000 whole tensors would take 1.8 GB)


def load_quantize_script() -> ModuleType:
    """models/efficientnet-lite0-int8/quantize.py as a module (its folder name is no package name)."""
    path = INT8_CARD.parent / "quantize.py"
    spec = importlib.util.spec_from_file_location("lookalike_int8_quantize", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fashion_mnist(n: int, folder: Path = FASHION_MNIST) -> tuple[np.ndarray, np.ndarray]:
    """The first n test images (n x 28 x 28 uint8) and their labels (0-9)."""
    images_file, labels_file = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    if not images_file.is_file():
        raise FileNotFoundError(f"{images_file} is missing: `apt-get install dataset-fashion-mnist`")
    with gzip.open(images_file) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_file) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    if n > len(images):
        raise ValueError(f"--n {n}: the test set has {len(images)} images")
    return images[:n], labels[:n]


def embed_all(sessions: dict[str, object], card: object, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each session's L2-normalised embeddings of the images (uint8 arrays), preprocessed once in chunks."""
    from PIL import Image

    from lookalike_server.imaging import preprocess

    out: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    for start in range(0, len(arrays), CHUNK):
        batch = np.stack([preprocess(Image.fromarray(a).convert("RGB"), card) for a in arrays[start:start + CHUNK]])
        for name, session in sessions.items():
            (emb,) = session.run([card.output_name], {card.input_name: batch})
            out[name].append(emb)
    result = {}
    for name, parts in out.items():
        emb = np.concatenate(parts).astype(np.float32)
        result[name] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return result


def top_k(unit: np.ndarray, k: int = K) -> np.ndarray:
    """Each row's k nearest other rows by cosine, brute force (n x k indices, nearest first)."""
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    idx = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1)


def precision_at_k(neighbours: np.ndarray, labels: np.ndarray) -> float:
    return float((labels[neighbours] == labels[:, None]).mean())


def overlap_at_k(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b, strict=True)]))


def cosine_summary(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(1)  # both L2-normalised
    return {"mean": round(float(cos.mean()), 4), "p01": round(float(np.percentile(cos, 1)), 4),
            "min": round(float(cos.min()), 4)}


def session(path: Path) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cores()
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# Blocks left in float32 for the float_blocks comparison, besides quantize.py's own FLOAT_BLOCKS.
FLOAT_BLOCK_CHOICES = {
    "none": (),
    "stem_block0": ("_conv_stem", "_blocks.0"),
    "stem_blocks0-3": ("_conv_stem", "_blocks.0", "_blocks.1", "_blocks.2", "_blocks.3"),
}


def other_sets(quantize: ModuleType, card: object) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """lfw_subset (faces, non-faces) and crops of scikit-image's photos (label: the source photo)."""
    import skimage.data

    faces = (skimage.data.lfw_subset() * 255).round().astype(np.uint8)
    photos = quantize.source_photos()
    crops = quantize.calibration_tensors(card, 30 * len(photos), seed=7)  # not the calibration's crops (seed 0)
    return {"lfw_subset": (list(faces), np.repeat([0, 1], len(faces) // 2)),
            "photo_crops": ([crops], np.arange(len(crops)) % len(photos))}


def embed_set(sessions: dict[str, object], card: object, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """embed_all for uint8 images, or for one ready batch of tensors (a list holding one 4-d array)."""
    if len(images) == 1 and images[0].ndim == 4:
        out = {}
        for name, sess in sessions.items():
            emb = np.concatenate([sess.run([card.output_name], {card.input_name: images[0][i:i + CHUNK]})[0]
                                  for i in range(0, len(images[0]), CHUNK)])
            out[name] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        return out
    return embed_all(sessions, card, images)


def agreement(reference: np.ndarray, other: np.ndarray, labels: np.ndarray) -> dict:
    ref_n, other_n = top_k(reference), top_k(other)
    return {"precision_at_10": round(precision_at_k(other_n, labels), 4),
            "overlap_at_10": round(overlap_at_k(ref_n, other_n), 4),
            "cosine": cosine_summary(reference, other)}


def noise_floor(float_session: object, card: object, images: list[np.ndarray], reference: np.ndarray,
                labels: np.ndarray, cosine: float) -> dict:
    """float32 against itself: inputs with sub-grey-level noise, embeddings with noise at a given cosine."""
    from PIL import Image

    from lookalike_server.imaging import preprocess

    rng = np.random.default_rng(0)
    step = 0.5 / card.std[0]  # half a grey level of the 0-255 scale, in the network's input units
    tensors = images[0] if len(images) == 1 and images[0].ndim == 4 else None
    parts = []
    for i in range(0, len(reference), CHUNK):
        batch = tensors[i:i + CHUNK] if tensors is not None else np.stack(
            [preprocess(Image.fromarray(a).convert("RGB"), card) for a in images[i:i + CHUNK]])
        noisy = batch + rng.uniform(-step, step, batch.shape).astype(np.float32)
        (emb,) = float_session.run([card.output_name], {card.input_name: noisy})
        parts.append(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    sigma = np.sqrt(1 / cosine**2 - 1) / np.sqrt(reference.shape[1])  # E[cos] of unit + N(0, sigma^2 I)
    noisy_emb = reference + rng.normal(0, sigma, reference.shape).astype(np.float32)
    noisy_emb /= np.linalg.norm(noisy_emb, axis=1, keepdims=True)
    return {"input_noise_half_grey_level": agreement(reference, np.concatenate(parts), labels),
            f"embedding_noise_at_cosine_{cosine}": agreement(reference, noisy_emb, labels)}


def run(args: argparse.Namespace) -> dict:
    from lookalike_server.model_card import load_model_card

    began = time.monotonic()
    quantize = load_quantize_script()
    float_card, int8_card = load_model_card(), load_model_card(INT8_CARD)
    images, labels = fashion_mnist(args.n)
    log(f"fashion-mnist: {len(images)} images, labels {np.bincount(labels).tolist()}")
    with tempfile.TemporaryDirectory(prefix="lookalike-quantization-") as tmp:
        models = {"float32": float_card.model_path, "shipped": int8_card.model_path}
        calibration = quantize.calibration_tensors(float_card, quantize.DEFAULT_IMAGES)
        recipes = {m: (m, quantize.FLOAT_BLOCKS) for m in args.methods}
        recipes.update({f"float_blocks_{k}": (quantize.DEFAULT_METHOD, v) for k, v in FLOAT_BLOCK_CHOICES.items()})
        quantize_s = {}
        for name, (method, blocks) in recipes.items():
            start = time.monotonic()
            models[name] = quantize.quantize(float_card, Path(tmp) / f"{name}.onnx", calibration, method, blocks)
            quantize_s[name] = round(time.monotonic() - start, 1)
            log(f"quantized {name} in {quantize_s[name]} s")
        # A recipe that reproduces the shipped file byte for byte is measured once, as "shipped".
        shipped_bytes = int8_card.model_path.read_bytes()
        same_as_shipped = [m for m in recipes if models[m].read_bytes() == shipped_bytes]
        sessions = {name: session(path) for name, path in models.items() if name not in same_as_shipped}
        start = time.monotonic()
        embeddings = embed_all(sessions, float_card, list(images))
        log(f"embedded {len(images)} images with {len(sessions)} models in {time.monotonic() - start:.0f} s")
        photos = embed_all(sessions, float_card, [np.asarray(p) for p in quantize.source_photos()])
        extra = other_sets(quantize, float_card)
        extra_emb = {name: embed_set({k: sessions[k] for k in ("float32", "shipped")}, float_card, imgs)
                     for name, (imgs, _) in extra.items()}
        shipped_cos = float((embeddings["float32"] * embeddings["shipped"]).sum(1).mean())
        floor = {"fashion_mnist": noise_floor(sessions["float32"], float_card, list(images), embeddings["float32"],
                                              labels, round(shipped_cos, 3))}
        for name, (imgs, lab) in extra.items():
            cos = float((extra_emb[name]["float32"] * extra_emb[name]["shipped"]).sum(1).mean())
            floor[name] = noise_floor(sessions["float32"], float_card, imgs, extra_emb[name]["float32"], lab,
                                      round(cos, 3))
    neighbours = {name: top_k(emb) for name, emb in embeddings.items()}
    reference = precision_at_k(neighbours["float32"], labels)
    for name in same_as_shipped:
        for measured in (embeddings, photos, neighbours):
            measured[name] = measured["shipped"]
    int8 = {}
    for name in models:
        if name == "float32":
            continue
        precision = precision_at_k(neighbours[name], labels)
        int8[name] = {
            **({"recipe": {"method": recipes[name][0], "float_blocks": list(recipes[name][1])}}
               if name in recipes else {}),
            "precision_at_10": round(precision, 4),
            "precision_at_10_drop": round(reference - precision, 4),
            "overlap_at_10": round(overlap_at_k(neighbours["float32"], neighbours[name]), 4),
            "cosine": cosine_summary(embeddings["float32"], embeddings[name]),
            "test_photos_cosine": cosine_summary(photos["float32"], photos[name]),
            **({"quantize_s": quantize_s[name]} if name in quantize_s else {}),
            **({"same_file_as_shipped": True} if name in same_as_shipped else {}),
        }
        log(f"{name}: precision@10 {precision:.4f} (float32 {reference:.4f}), "
            f"overlap@10 {int8[name]['overlap_at_10']}, cosine {int8[name]['cosine']}")
    sets = {}
    for name, (_, lab) in extra.items():
        e = extra_emb[name]
        sets[name] = {"images": len(lab), "labels": np.bincount(lab).tolist(),
                      "float32_precision_at_10": round(precision_at_k(top_k(e["float32"]), lab), 4),
                      "shipped": agreement(e["float32"], e["shipped"], lab)}
        log(f"{name}: {sets[name]}")
    shipped = int8["shipped"]
    return {
        "benchmark": "quantization",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "data": {"dataset": "Debian dataset-fashion-mnist, test set (t10k)", "images": len(images),
                 "which": f"the first {len(images)}", "labels": np.bincount(labels).tolist(),
                 "preprocessing": "28x28 greyscale to RGB, then the card's (shorter side to 256, centre crop 224)"},
        "search": f"brute force, cosine, k={K}, each image's own row left out",
        "models": {"float32": float_card.name, "int8": int8_card.name,
                   "shipped_quantization": _model_prop(int8_card.model_path, "lookalike.quantization"),
                   "recipes": f"quantize.py's defaults ({quantize.DEFAULT_IMAGES} calibration crops) but for the "
                              "method or the blocks kept in float32 named in each model's recipe"},
        "float32": {"precision_at_10": round(reference, 4)},
        "int8": int8,
        "shipped_reproduced_by": same_as_shipped,
        "other_sets": sets,
        "noise_floor": floor,
        "targets": {
            "precision_at_10_drop": {"value": shipped["precision_at_10_drop"],
                                     "target": f"<= {TARGETS['precision_at_10_drop']}",
                                     "pass": shipped["precision_at_10_drop"] <= TARGETS["precision_at_10_drop"]},
            "overlap_at_10": {"value": shipped["overlap_at_10"], "target": f">= {TARGETS['overlap_at_10']}",
                              "pass": shipped["overlap_at_10"] >= TARGETS["overlap_at_10"]},
        },
        "wall_s": round(time.monotonic() - began, 1),
    }


def _model_prop(path: Path, key: str) -> str | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == key), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=3000, help="Fashion-MNIST test images (default 3000)")
    parser.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m], default=["MinMax", "Percentile"],
                        help="calibration methods to compare, comma-separated (MinMax, Entropy, Percentile)")
    parser.add_argument("--write", action="store_true", help="also save to bench/results/quantization.json")
    args = parser.parse_args(argv)
    result = run(args)
    emit(result, "quantization", args.write)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
