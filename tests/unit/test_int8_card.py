"""The int8 EfficientNet-Lite0 card: it loads like any card, its vectors stay close to float32's, and
quantize.py makes a working model from a small calibration set."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

from lookalike_server.embedder import Embedder
from lookalike_server.imaging import image_to_tensor
from lookalike_server.model_card import load_model_card
from tests.photos import PHOTO_NAMES

INT8_DIR = Path(__file__).resolve().parents[2] / "models" / "efficientnet-lite0-int8"
INT8_CARD = INT8_DIR / "card.toml"


def quantize_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("int8_quantize", INT8_DIR / "quantize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def photo_batch(photos_dir: Path, card) -> np.ndarray:
    files = sorted(photos_dir.iterdir())
    assert len(files) == len(PHOTO_NAMES)
    return np.stack([image_to_tensor(f.read_bytes(), card) for f in files])


def test_int8_card_has_its_own_name_and_the_float32_interface():
    int8, float32 = load_model_card(INT8_CARD), load_model_card()
    assert int8.name == "efficientnet-lite0-int8"
    assert int8.name != float32.name  # a collection never mixes float32 and int8 vectors
    same = ("input_name", "height", "width", "resize", "resize_to", "interpolation", "mean", "std",
            "output_name", "dimension")
    assert {f: getattr(int8, f) for f in same} == {f: getattr(float32, f) for f in same}
    assert int8.model_path.stat().st_size < 8e6  # int8 weights: about a quarter of float32's 18.6 MB


def test_int8_model_is_quantized():
    model = onnx.load(str(load_model_card(INT8_CARD).model_path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 40
    assert ops.count("DequantizeLinear") > 40
    props = {p.key: p.value for p in model.metadata_props}
    assert "calibration" in props["lookalike.quantization"]


def test_int8_model_keeps_the_first_blocks_in_float32():
    model = onnx.load(str(load_model_card(INT8_CARD).model_path))
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    conv_weight_quantized = {n.name: n.input[1] in dequantized for n in model.graph.node if n.op_type == "Conv"}
    in_float = {name for name, quantized in conv_weight_quantized.items() if not quantized}
    block = {name.split("/")[1] for name in in_float}
    assert block == set(quantize_script().FLOAT_BLOCKS)  # the stem and blocks 0-1, nothing else
    assert len(in_float) == 6
    assert sum(conv_weight_quantized.values()) == len(conv_weight_quantized) - 6


def test_int8_vectors_agree_with_float32_on_the_test_photos(photos_dir):
    int8_card, float_card = load_model_card(INT8_CARD), load_model_card()
    int8 = Embedder(int8_card, device="cpu", threads=2)
    assert int8.provider == "CPUExecutionProvider"
    batch = photo_batch(photos_dir, float_card)
    cos = cosines(int8.embed(batch), Embedder(float_card, device="cpu", threads=2).embed(batch))
    by_photo = {f.name: round(float(c), 3) for f, c in zip(sorted(photos_dir.iterdir()), cos, strict=True)}
    # Most photos are 0.98-1.0; the two close-up textures (grass, gravel) are the lowest, at about 0.93.
    assert cos.mean() >= 0.95, by_photo
    assert cos.min() >= 0.9, by_photo
    assert by_photo["chelsea.jpg"] >= 0.99
    assert by_photo["coffee.jpg"] >= 0.99


def test_quantize_script_makes_a_model_that_loads(tmp_path, photos_dir):
    quantize = quantize_script()
    float_card = load_model_card()
    # Eight calibration crops and MinMax (the fastest method): a few seconds.
    tensors = quantize.calibration_tensors(float_card, 8)
    assert tensors.shape == (8, 3, 224, 224)
    assert np.array_equal(tensors, quantize.calibration_tensors(float_card, 8))  # deterministic
    quantize.quantize(float_card, tmp_path / "model.onnx", tensors, "MinMax")
    (tmp_path / "card.toml").write_text(INT8_CARD.read_text())
    card = load_model_card(tmp_path / "card.toml")
    assert card.model_path == (tmp_path / "model.onnx").resolve()
    assert quantize.check(card.model_path, float_card) == []  # interface, ImageNet top-1, cosine on two photos
    batch = photo_batch(photos_dir, card)[:4]
    out = Embedder(card, device="cpu", threads=2).embed(batch)
    assert out.shape == (4, 1280)
    assert np.isfinite(out).all()


def test_quantize_refuses_an_unknown_method(tmp_path):
    quantize = quantize_script()
    with pytest.raises(ValueError, match="MinMax"):
        quantize.quantize(load_model_card(), tmp_path / "m.onnx", np.zeros((1, 3, 224, 224), np.float32), "KL")


def test_quantize_refuses_float_blocks_the_network_lacks(tmp_path):
    quantize = quantize_script()
    with pytest.raises(ValueError, match=r"_blocks\.99"):
        quantize.quantize(load_model_card(), tmp_path / "m.onnx", np.zeros((1, 3, 224, 224), np.float32),
                          float_blocks=("_blocks.99",))
