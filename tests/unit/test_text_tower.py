"""Text towers: the tiny two-tower card loads, its tokenizer is a real BPE, prompts embed as onnxruntime says,
and broken cards fail at start-up saying what is wrong."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from lookalike_server.embedder import Embedder
from lookalike_server.errors import InvalidArgument
from lookalike_server.model_card import cards_with_text, load_model_card
from lookalike_server.testing.tiny_clip import CONTEXT_LENGTH, main, write_tiny_clip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tiny"), dimension=48)


@pytest.fixture(scope="module")
def embedder(tiny):
    return Embedder(load_model_card(tiny), device="cpu", threads=1)


def _copy(tiny, tmp_path):
    folder = tmp_path / "card"
    shutil.copytree(tiny.parent, folder)
    return folder / "card.toml"


def test_the_command_writes_a_card_with_both_towers(tmp_path, capsys):
    assert main([str(tmp_path / "out"), "--dimension", "16", "--seed", "3"]) == 0
    assert "--model-card" in capsys.readouterr().out
    card = load_model_card(tmp_path / "out" / "card.toml")
    assert (card.name, card.dimension, card.height, card.width) == ("tiny-clip", 16, 224, 224)
    assert card.text is not None
    assert (card.text.input_ids, card.text.attention_mask, card.text.output_name) == (
        "input_ids", "attention_mask", "text_embedding")
    assert (card.text.context_length, card.text.padding) == (CONTEXT_LENGTH, "longest")
    for path in (card.model_path, card.text.model_path, card.text.tokenizer_path):
        assert path.is_file()


def test_the_tokenizer_is_a_trained_bpe_with_start_and_end_tokens(tiny):
    spec = json.loads((tiny.parent / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE" and len(spec["model"]["merges"]) > 50
    tokenizer = Tokenizer.from_file(str(tiny.parent / "tokenizer.json"))
    ids = tokenizer.encode("A red car").ids
    assert ids[0] == tokenizer.token_to_id("<start>") and ids[-1] == tokenizer.token_to_id("<end>")
    assert ids == tokenizer.encode("a red car").ids  # lower-cased
    assert len(tokenizer.encode("a 🚀 über").ids) > 2  # byte-level: any UTF-8 has tokens


def test_the_same_seed_writes_the_same_model(tmp_path):
    first, second = write_tiny_clip(tmp_path / "a"), write_tiny_clip(tmp_path / "b")
    for name in ("image.onnx", "text.onnx", "tokenizer.json"):
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes(), name


def test_prompts_embed_as_onnxruntime_computes_them_directly(tiny, embedder):
    text = embedder.text
    assert text is not None
    tokenizer = Tokenizer.from_file(str(tiny.parent / "tokenizer.json"))
    session = ort.InferenceSession(str(tiny.parent / "text.onnx"), providers=["CPUExecutionProvider"])
    prompts = ["a red car", "a kite high in the sky over the sea"]
    batch = text.embed([text.tokenize(p) for p in prompts])  # padded to the longer prompt
    for prompt, row in zip(prompts, batch, strict=True):
        ids = np.array([tokenizer.encode(prompt).ids], dtype=np.int64)
        (direct,) = session.run(["text_embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        np.testing.assert_allclose(row, direct[0], rtol=1e-5, atol=1e-6)
    assert batch.shape == (2, 48) and not np.allclose(batch[0], batch[1])


def test_bad_prompts_are_refused_with_the_reason(embedder):
    text = embedder.text
    for empty in ("", "   \n\t"):
        with pytest.raises(InvalidArgument, match=r"^text is empty: a prompt needs at least one word$"):
            text.tokenize(empty)
    words = ["cat"]
    while len(text.tokenizer.encode(" ".join([*words, "cat"])).ids) <= CONTEXT_LENGTH:
        words.append("cat")
    assert len(text.tokenize(" ".join(words))) <= CONTEXT_LENGTH  # the longest that fits is embedded
    with pytest.raises(InvalidArgument, match=r"tokens long"):
        text.tokenize(" ".join([*words, "cat"]))
    with pytest.raises(InvalidArgument) as e:
        text.tokenize("cat " * 200, "text 'x'")
    assert e.value.message.startswith("text 'x' is ")
    assert f"model 'tiny-clip' reads at most {CONTEXT_LENGTH}" in e.value.message and "never cut" in e.value.message


def test_missing_text_files_are_named(tiny, tmp_path):
    card = _copy(tiny, tmp_path)
    (card.parent / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json as its tokenizer, which does not exist"):
        load_model_card(card)
    (card.parent / "text.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"text\.onnx as its text encoder, which does not exist"):
        load_model_card(card)


def test_a_tokenizer_that_does_not_load_is_named(tiny, tmp_path):
    card = _copy(tiny, tmp_path)
    (card.parent / "tokenizer.json").write_text('{"model": "not a tokenizer"}')
    with pytest.raises(ValueError, match=r"tokenizer .*tokenizer\.json does not load with the tokenizers library"):
        Embedder(load_model_card(card), device="cpu", threads=1)


def test_a_text_tower_of_another_dimension_is_refused(tiny, tmp_path):
    card = _copy(tiny, tmp_path)
    card.write_text(card.read_text().replace("dimension = 48", "dimension = 32"))
    with pytest.raises(ValueError, match=r"returns vectors of shape \(48,\).*dimension is 32.*both towers"):
        Embedder(load_model_card(card), device="cpu", threads=1)


def test_wrong_names_and_rules_in_the_text_section_are_named(tiny, tmp_path):
    card = _copy(tiny, tmp_path)
    original = card.read_text()
    card.write_text(original.replace('output = "text_embedding"', 'output = "pooled"'))
    with pytest.raises(ValueError, match=r"text encoder text\.onnx has no output 'pooled'"):
        Embedder(load_model_card(card), device="cpu", threads=1)
    card.write_text(original.replace('attention_mask = "attention_mask"', 'attention_mask = "mask"'))
    with pytest.raises(ValueError, match=r"has no input 'mask'"):
        Embedder(load_model_card(card), device="cpu", threads=1)
    card.write_text(original.replace('padding = "longest"', 'padding = "right"'))
    with pytest.raises(ValueError, match=r"padding must be one of"):
        load_model_card(card)
    card.write_text(original.replace('context_length = 32', 'context_length = 1'))
    with pytest.raises(ValueError, match=r"context_length must be at least 2"):
        load_model_card(card)


def test_cards_with_a_text_tower_are_found(tiny, tmp_path):
    _copy(tiny, tmp_path)
    (tmp_path / "image-only").mkdir()
    (tmp_path / "image-only" / "card.toml").write_text('name = "x"\n')
    assert cards_with_text(tmp_path) == [tmp_path / "card" / "card.toml"]
    assert cards_with_text() == []  # the shipped models: none has a text tower
