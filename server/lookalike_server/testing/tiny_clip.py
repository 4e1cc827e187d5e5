"""A tiny two-tower (CLIP-shaped) model for tests: random image and text towers as ONNX, a real BPE
tokenizer.json trained by `tokenizers` on a built-in word list, and a card.toml. Its vectors mean nothing;
it exists to test the text plumbing end to end on any machine, without torch or downloaded weights.

    python -m lookalike_server.testing.tiny_clip OUT_DIR [--dimension 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

NAME = "tiny-clip"
OPSET = 17
IMAGE_SIZE = 224  # as the shipped EfficientNet card, so the same preprocessing runs
CONTEXT_LENGTH = 32
SPECIAL_TOKENS = ["<pad>", "<start>", "<end>"]  # ids 0, 1, 2
_WORD_LINES = """
a an the of in on at with and or to from by for over under near behind photo picture image drawing painting
red orange yellow green blue purple pink brown black white grey gray dark bright small large big tiny old new
cat dog bird horse cow sheep fish kite car bus truck bicycle train boat plane rocket astronaut moon sky sun
cloud tree flower grass field road street city house building bridge river lake sea beach mountain snow rain
coffee cup tea plate table chair book page text logo letter face person man woman child people crowd hand
camera clock phone window door wall floor room kitchen garden park forest desert night day morning evening
running sitting standing flying swimming sleeping eating high low close far up down left right
"""
WORDS = tuple(_WORD_LINES.split())


def train_tokenizer(words: Sequence[str] = WORDS, vocab_size: int = 400) -> Tokenizer:
    """A byte-level BPE tokenizer (CLIP's kind): any UTF-8 text tokenizes, with <start> and <end> around it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    phrases = [" ".join(words[i : i + 4]) for i in range(len(words))]
    tokenizer.train_from_iterator([*words, *phrases], trainer)
    start, end = (tokenizer.token_to_id(t) for t in SPECIAL_TOKENS[1:])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<start> $A <end>", special_tokens=[("<start>", start), ("<end>", end)]
    )
    return tokenizer


def _init(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)


def image_tower(dimension: int, rng: np.random.Generator) -> onnx.ModelProto:
    """pixel_values (N, 3, 224, 224) -> two strided convolutions, global pooling, a projection -> (N, dimension)."""
    nodes = [
        helper.make_node("Conv", ["pixel_values", "w1", "b1"], ["c1"], strides=[4, 4], pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("Sub", ["features", "centre"], ["centred"]),  # so vectors point every way
        helper.make_node("MatMul", ["centred", "projection"], ["image_embedding"]),
    ]
    initializers = [
        _init(rng, "w1", 8, 3, 7, 7), numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        _init(rng, "w2", 16, 8, 3, 3), numpy_helper.from_array(np.zeros(16, np.float32), "b2"),
        numpy_helper.from_array(np.full((16,), 0.1, np.float32), "centre"),
        _init(rng, "projection", 16, dimension),
    ]
    graph = helper.make_graph(
        nodes, "tiny_clip_image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("image_embedding", TensorProto.FLOAT, ["batch", dimension])],
        initializers,
    )
    return _model(graph)


def text_tower(vocab_size: int, dimension: int, rng: np.random.Generator, width: int = 32) -> onnx.ModelProto:
    """input_ids, attention_mask (N, L) -> token embeddings, their masked mean, a small MLP -> (N, dimension)."""
    nodes = [
        helper.make_node("Gather", ["token_embedding", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["summed", "count"], ["mean"]),
        helper.make_node("MatMul", ["mean", "w1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["text_embedding"]),
    ]
    initializers = [
        numpy_helper.from_array(rng.standard_normal((vocab_size, width)).astype(np.float32), "token_embedding"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        _init(rng, "w1", width, 2 * width),
        _init(rng, "w2", 2 * width, dimension),
    ]
    graph = helper.make_graph(
        nodes, "tiny_clip_text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("text_embedding", TensorProto.FLOAT, ["batch", dimension])],
        initializers,
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lookalike")
    model.ir_version = 8  # readable by every ONNX Runtime the server supports
    onnx.checker.check_model(model, full_check=True)
    return model


CARD = """\
name = "{name}"
description = "A tiny random two-tower model for tests (seed {seed}): its vectors mean nothing."
license = "Apache-2.0"
source = "Generated by python -m lookalike_server.testing.tiny_clip"
file = "image.onnx"

[input]
name = "pixel_values"
layout = "NCHW"
size = [{size}, {size}]
resize = "shorter_side"
resize_to = 256
interpolation = "bilinear"
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]

[output]
name = "image_embedding"
dimension = {dimension}

[text]
file = "text.onnx"
tokenizer = "tokenizer.json"
input_ids = "input_ids"
attention_mask = "attention_mask"
context_length = {context}      # tokens, <start> and <end> included; longer prompts are refused
padding = "longest"             # this network takes any length and a mask
pad_id = 0
output = "text_embedding"
"""


def write_tiny_clip(out_dir: Path | str, dimension: int = 64, seed: int = 0, name: str = NAME) -> Path:
    """Writes image.onnx, text.onnx, tokenizer.json and card.toml into out_dir; returns the card's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokenizer = train_tokenizer()
    tokenizer.save(str(out / "tokenizer.json"))
    onnx.save(image_tower(dimension, rng), str(out / "image.onnx"))
    onnx.save(text_tower(tokenizer.get_vocab_size(), dimension, rng), str(out / "text.onnx"))
    card = out / "card.toml"
    card.write_text(CARD.format(name=name, seed=seed, size=IMAGE_SIZE, dimension=dimension, context=CONTEXT_LENGTH))
    return card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lookalike_server.testing.tiny_clip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write image.onnx, text.onnx, tokenizer.json and card.toml into")
    parser.add_argument("--dimension", type=int, default=64, help="embedding dimension of both towers")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    args = parser.parse_args(argv)
    card = write_tiny_clip(args.out_dir, args.dimension, args.seed)
    print(f"wrote {card}; serve it with: lookalike serve --model-card {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
