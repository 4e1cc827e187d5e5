"""Quantize the shipped float32 EfficientNet-Lite0 to int8: lookalike's CPU card.

ONNX Runtime static quantization, QDQ format: int8 weights per output channel (symmetric), uint8
activations per tensor, ranges calibrated on real photos. The stem and the first two blocks (FLOAT_BLOCKS,
the 112x112 layers) stay float32: in int8 they move the neighbours found too far from float32's, and they
are a small share of the time (bench/quantization.py measures both; card.toml gives the figures). The
calibration set is generated here, deterministically, from scikit-image's bundled photos (random crops of
50-100% of each side, left-right flips and some upside-down ones), preprocessed exactly as the server does
(``lookalike_server.imaging``), so nothing is downloaded and the same command always makes the same file.

Run it from the repository root, in the project's venv (``make setup``; scikit-image comes with the
``test`` extra)::

    .venv/bin/python models/efficientnet-lite0-int8/quantize.py [--method Percentile] [--images 128]

The method was chosen by measurement (``bench/quantization.py`` compares MinMax, Entropy and Percentile
on Fashion-MNIST; ``card.toml`` says which won and what it costs). After quantizing, the script checks the
file with ``onnx.checker``, checks the interface the server relies on, and compares it with the float32
network on two photos: embedding cosine and the ImageNet top-1 class (chelsea a tabby or tiger cat,
coffee an espresso).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from lookalike_server.imaging import preprocess
from lookalike_server.model_card import ModelCard, load_model_card

HERE = Path(__file__).resolve().parent
FLOAT_CARD = HERE.parent / "efficientnet-lite0" / "card.toml"
METHODS = ("MinMax", "Entropy", "Percentile")
DEFAULT_METHOD = "Percentile"  # measured best of METHODS by bench/quantization.py (card.toml)
DEFAULT_IMAGES = 128
CALIBRATION_BATCH = 8
# scikit-image's bundled photos that need no download (`cat` is `chelsea` again).
SOURCE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text",
)
# ImageNet-1k classes the check photos must keep: tabby / tiger cat; espresso.
EXPECTED_TOP1 = {"chelsea": (281, 282), "coffee": (967,)}
MIN_CHECK_COSINE = 0.95  # float32 vs int8 embedding on the check photos
# Blocks left in float32 (the first part of their nodes' names). Per-tensor uint8 activations are coarsest at
# full resolution, and the network amplifies that noise: chosen by a per-block sensitivity sweep.
FLOAT_BLOCKS = ("_conv_stem", "_blocks.0", "_blocks.1")


def source_photos() -> list[Image.Image]:
    """scikit-image's bundled photos as RGB images (greyscale ones repeated over three channels)."""
    import skimage.data

    photos = []
    for name in SOURCE_PHOTOS:
        array = np.asarray(getattr(skimage.data, name)())
        if array.dtype != np.uint8:
            array = (array.astype(np.float64) / max(float(array.max()), 1.0) * 255).astype(np.uint8)
        photos.append(Image.fromarray(array).convert("RGB"))
    return photos


def calibration_tensors(card: ModelCard, images: int, seed: int = 0) -> np.ndarray:
    """images x 3 x H x W float32: crops and flips of the source photos, preprocessed as the server does."""
    sources = source_photos()
    out = np.empty((images, 3, card.height, card.width), dtype=np.float32)
    for i in range(images):
        rng = random.Random(f"calibration-{seed}-{i}")
        source = sources[i % len(sources)]
        fraction = rng.uniform(0.5, 1.0)
        width, height = max(32, round(source.width * fraction)), max(32, round(source.height * fraction))
        left, top = rng.randint(0, source.width - width), rng.randint(0, source.height - height)
        img = source.crop((left, top, left + width, top + height))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.2:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        preprocess(img, card, out[i])
    return out


class _Batches(CalibrationDataReader):
    """Feeds the calibration tensors to ONNX Runtime's calibrator, CALIBRATION_BATCH at a time."""

    def __init__(self, input_name: str, tensors: np.ndarray) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            {input_name: tensors[i:i + CALIBRATION_BATCH]} for i in range(0, len(tensors), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def float_nodes(model: onnx.ModelProto, blocks: Sequence[str]) -> list[str]:
    """The Conv and Add nodes of the given blocks (EfficientNet's `/<block>/...` node names)."""
    return [n.name for n in model.graph.node
            if n.op_type in ("Conv", "Add") and n.name.split("/")[1:2] and n.name.split("/")[1] in blocks]


def quantize(card: ModelCard, output: Path, tensors: np.ndarray, method: str = DEFAULT_METHOD,
             float_blocks: Sequence[str] = FLOAT_BLOCKS) -> Path:
    """Writes the int8 QDQ version of card's network to output, its ranges calibrated on tensors; the nodes
    of float_blocks stay float32."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    with tempfile.TemporaryDirectory(prefix="lookalike-quantize-") as tmp:
        # Folds the exporter's constant padding arithmetic and infers shapes, as ONNX Runtime advises before
        # quantizing. Symbolic shape inference needs sympy, which the venv lacks; the shapes here are static.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(card.model_path), str(prepared), skip_symbolic_shape=True)
        excluded = float_nodes(onnx.load(str(prepared)), float_blocks)
        if len(float_blocks) > 0 and not excluded:
            raise ValueError(f"no Conv or Add node in blocks {list(float_blocks)}")
        quantize_static(
            str(prepared),
            str(output),
            _Batches(card.input_name, tensors),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=getattr(CalibrationMethod, method),
            calibration_providers=["CPUExecutionProvider"],
        )
    model = onnx.load(str(output))
    in_float = f"; float32: {', '.join(float_blocks)}" if float_blocks else "; every block in int8"
    onnx.helper.set_model_props(model, {
        "lookalike.quantization": f"static QDQ, int8 per-channel weights, uint8 activations, {method} "
                                  f"calibration on {len(tensors)} crops of scikit-image photos{in_float}",
    })
    onnx.save(model, str(output))
    return output


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check(output: Path, card: ModelCard) -> list[str]:
    """The interface the server relies on, and agreement with float32 on two photos; the failures found."""
    onnx.checker.check_model(str(output), full_check=True)
    quantized, reference = session(output), session(card.model_path)
    failures = []
    if [i.name for i in quantized.get_inputs()] != [card.input_name]:
        failures.append(f"inputs {[i.name for i in quantized.get_inputs()]}, expected [{card.input_name!r}]")
    outputs = [o.name for o in quantized.get_outputs()]
    if card.output_name not in outputs or "logits" not in outputs:
        return [*failures, f"outputs {outputs}, expected {card.output_name!r} and 'logits'"]
    import skimage.data

    names = list(EXPECTED_TOP1)
    batch = np.stack([preprocess(Image.fromarray(getattr(skimage.data, n)()), card) for n in names])
    embedding, logits = quantized.run([card.output_name, "logits"], {card.input_name: batch})
    (float_embedding,) = reference.run([card.output_name], {card.input_name: batch})
    cosine = (embedding * float_embedding).sum(1) / np.linalg.norm(embedding, axis=1) \
        / np.linalg.norm(float_embedding, axis=1)
    for name, cos, row in zip(names, cosine, logits, strict=True):
        top1 = int(np.argmax(row))
        print(f"{name}: cosine to float32 {cos:.4f}, top-1 class {top1}")
        if cos < MIN_CHECK_COSINE:
            failures.append(f"{name}: cosine to float32 {cos:.4f} < {MIN_CHECK_COSINE}")
        if top1 not in EXPECTED_TOP1[name]:
            failures.append(f"{name}: top-1 class {top1}, expected {' or '.join(map(str, EXPECTED_TOP1[name]))}")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "model.onnx", help="where to write the ONNX file")
    parser.add_argument("--float-card", type=Path, default=FLOAT_CARD, help="the float32 card to quantize")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="range calibration method")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="calibration images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration crops")
    args = parser.parse_args(argv)
    card = load_model_card(args.float_card)
    output: Path = args.output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    quantize(card, output, calibration_tensors(card, args.images, args.seed), args.method)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB): {args.method}, {args.images} calibration images")
    failures = check(output, card)
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
