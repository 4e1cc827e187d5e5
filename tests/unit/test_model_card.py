"""Model cards: the default one loads, broken ones say what is wrong, and the network matches its card."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lookalike_server.embedder import Embedder, float16_model, serving_model
from lookalike_server.imaging import image_to_tensor
from lookalike_server.model_card import DEFAULT_CARD, load_model_card

INT8_CARD = Path(__file__).resolve().parents[2] / "models" / "efficientnet-lite0-int8" / "card.toml"


def test_default_card():
    card = load_model_card()
    assert card.name == "efficientnet-lite0"
    assert (card.height, card.width, card.dimension) == (224, 224, 1280)
    assert card.model_path.is_file()


def test_missing_fields_and_files_are_named(tmp_path):
    card = tmp_path / "card.toml"
    card.write_text('name = "x"\nfile = "model.onnx"\n')
    with pytest.raises(ValueError, match="incomplete"):
        load_model_card(card)
    text = DEFAULT_CARD.read_text().replace('file = "model.onnx"', 'file = "absent.onnx"')
    card.write_text(text)
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx"):
        load_model_card(card)


def test_embedder_on_real_photos(photos_dir):
    card = load_model_card()
    embedder = Embedder(card, device="cpu", threads=2)
    assert embedder.provider == "CPUExecutionProvider"
    batch = np.stack([image_to_tensor((photos_dir / n).read_bytes(), card) for n in ("chelsea.jpg", "coffee.jpg")])
    out = embedder.embed(batch)
    assert out.shape == (2, 1280) and out.dtype == np.float32
    single = embedder.embed(batch[:1])
    np.testing.assert_allclose(single[0], out[0], rtol=1e-3, atol=1e-3)


def test_cuda_device_without_a_gpu_is_refused_clearly():
    card = load_model_card()
    with pytest.raises(RuntimeError, match=r"GPU|CUDA"):
        Embedder(card, device="cuda")


def test_require_gpu_refuses_a_cpu_only_machine():
    with pytest.raises(RuntimeError, match=r"--require-gpu: no GPU execution provider is active"):
        Embedder(load_model_card(), device="auto", require_gpu=True)


def test_fp16_without_a_gpu_is_refused_clearly():
    with pytest.raises(RuntimeError, match=r"--fp16 needs a GPU execution provider"):
        Embedder(load_model_card(), device="auto", fp16=True)


def test_float16_network_keeps_float32_io_and_agrees_with_float32(photos_dir):
    """--fp16's conversion: same input and output types, same embeddings to float16's precision (run here on
    the CPU provider, which computes the float16 network through casts: what a GPU runs, at CPU speed)."""
    card = load_model_card()
    converted = float16_model(serving_model(card))
    weights = onnx.load_from_string(converted).graph.initializer
    assert {w.data_type for w in weights if len(w.dims) == 4} == {onnx.TensorProto.FLOAT16}  # conv kernels
    half = ort.InferenceSession(converted, providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in half.get_inputs()] == [(card.input_name, "tensor(float)")]
    names = ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    batch = np.stack([image_to_tensor((photos_dir / n).read_bytes(), card) for n in names])
    full = Embedder(card, device="cpu", threads=2).embed(batch)
    (out,) = half.run([card.output_name], {card.input_name: batch})
    out = out.reshape(len(names), -1)
    assert out.dtype == np.float32
    cosine = (out * full).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(full, axis=1)
    assert np.all(cosine > 0.999), cosine
    assert not np.allclose(out, full, rtol=1e-6, atol=1e-6)  # it really ran in float16


def test_embeddings_do_not_depend_on_batch_size_or_io_binding(photos_dir):
    card = load_model_card()
    plain = Embedder(card, device="cpu", threads=2)
    bound = Embedder(card, device="cpu", threads=2, io_binding=True)
    names = ["chelsea.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg", "moon.jpg"]
    batch = np.stack([image_to_tensor((photos_dir / n).read_bytes(), card) for n in names])
    together = plain.embed(batch)
    one_by_one = np.concatenate([plain.embed(batch[i : i + 1]) for i in range(len(names))])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bound.embed(batch), together, rtol=1e-5, atol=1e-5)


def test_cpu_runs_single_threaded_sessions_side_by_side():
    """On a CPU each run takes one thread, and as many runs as cores go at once; a thread count is kept."""
    card = load_model_card()
    automatic = Embedder(card, device="auto")  # a GPU build without a GPU falls back to this layout too
    assert (automatic.intra_op_threads, automatic.concurrent_runs) == (1, os.cpu_count())
    pinned = Embedder(card, device="cpu", threads=2)
    assert pinned.intra_op_threads == 2
    assert pinned.concurrent_runs == max(1, (os.cpu_count() or 1) // 2)


@pytest.mark.parametrize("card_path", [DEFAULT_CARD, INT8_CARD])
def test_served_network_leaves_out_the_classifier_and_embeds_the_same(card_path):
    """The shipped files carry an ImageNet classifier (`logits`) beside the embedding; ONNX Runtime would run it
    on every call, so the server loads the network without it, and the embeddings are the same bits."""
    card = load_model_card(card_path)
    assert [o.name for o in onnx.load(str(card.model_path)).graph.output] == [card.output_name, "logits"]
    served = onnx.load_from_string(serving_model(card))
    assert [o.name for o in served.graph.output] == [card.output_name]
    assert not {n.op_type for n in served.graph.node} & {"Gemm", "QGemm"}
    embedder = Embedder(card, device="cpu", threads=1)
    assert [o.name for o in embedder.session.get_outputs()] == [card.output_name]
    full = ort.InferenceSession(str(card.model_path), embedder.session.get_session_options(),
                                providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal((2, 3, card.height, card.width)).astype(np.float32)
    (reference,) = full.run([card.output_name], {card.input_name: batch})
    assert np.array_equal(embedder.embed(batch), reference.reshape(2, -1))


def test_served_network_is_the_file_when_nothing_is_left_out(tmp_path):
    card = load_model_card()
    model = onnx.load(str(card.model_path))
    keep = [o for o in model.graph.output if o.name == card.output_name]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(tmp_path / "model.onnx"))
    (tmp_path / "card.toml").write_text(DEFAULT_CARD.read_text())
    only = load_model_card(tmp_path / "card.toml")
    assert serving_model(only) == str(only.model_path)  # loaded from its path: no copy of it in memory
