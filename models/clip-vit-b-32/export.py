"""Export a CLIP ViT-B/32 from OpenCLIP weights on disk to a lookalike model card with a text tower.

Writes, into the output folder (default: this folder):

- ``image.onnx``: ``pixel_values`` float32 N x 3 x 224 x 224 -> ``image_embedding`` N x 512
  (``model.encode_image``, not normalised: the server normalises);
- ``text.onnx``: ``input_ids`` int64 N x 77 -> ``text_embedding`` N x 512 (``model.encode_text``; CLIP pools
  the end-of-text token, the highest id, with a causal mask of its own, so the network takes no attention mask
  and every prompt is padded with 0 to the full 77);
- ``tokenizer.json``: CLIP's byte-level BPE for the ``tokenizers`` library, built from the vocabulary that ships
  inside the ``open_clip_torch`` wheel (``bpe_simple_vocab_16e6.txt.gz``), as Hugging Face's CLIP converter does;
- ``card.toml``: the card, its preprocessing taken from the model's own (224 px, bicubic, OpenAI's mean/std);
- ``export-report.json``: ONNX Runtime against PyTorch (max abs difference per tower) and the tokenizer
  against OpenCLIP's own on a list of prompts.

Nothing is downloaded: ``--weights`` must be a file on disk (an OpenCLIP checkpoint: ``.bin``, ``.pt`` or
``.safetensors``); a pretrained *tag* such as ``openai`` is refused, because OpenCLIP would fetch it.
``--random`` exports a randomly initialised network instead (to check this script without weights).
See README.md beside this file for the exact commands.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OPSET = 17
CONTEXT_LENGTH = 77
PROMPTS = [
    "a photo of a cat", "A red car parked on the street.", "a kite high in the air", "two dogs, 3 cats & 1 bird",
    "it's a photo of an astronaut's helmet", "café au lait", "ROCKET LAUNCH at night!!!", "  many   spaces  ",
    "numbers 12345 and 3.14", "emoji 🚀 and ümlauts", "a diagram of the moon's phases", "x",
    "ünïcödé — dashes \u2013 and “quotes” \u2018too\u2019", "ﬁne ﬂowers",
]
LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb06": "st"}
# OpenCLIP's tokenizer pattern (open_clip/tokenizer.py, SimpleTokenizer.pat), without its special tokens.
CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

CARD = """\
name = "{name}"
description = "CLIP {model} (OpenCLIP), image and text towers; {dimension}-d embeddings, cosine."
license = "{license}"
source = "{source}"
file = "image.onnx"

[input]
name = "pixel_values"
layout = "NCHW"
size = [{size}, {size}]
resize = "shorter_side"
resize_to = {size}
interpolation = "{interpolation}"
mean = [{mean}]   # on the 0-255 scale, RGB order
std = [{std}]

[output]
name = "image_embedding"
dimension = {dimension}

[text]
file = "text.onnx"
tokenizer = "tokenizer.json"
input_ids = "input_ids"
attention_mask = ""          # CLIP's text transformer masks causally itself
context_length = {context}     # tokens, start and end included; longer prompts are refused, never cut
padding = "max_length"       # the positional embedding covers exactly {context} positions
pad_id = 0
output = "text_embedding"
"""


def clip_tokenizer(bpe_path: Path):  # -> tokenizers.Tokenizer
    """CLIP's BPE as a `tokenizers` Tokenizer: the vocabulary and merges of OpenCLIP's SimpleTokenizer, and the
    pre-processing of Hugging Face's CLIPConverter (NFC, whitespace folded, lower case, CLIP's split pattern,
    byte-level symbols, `</w>` ending each word), with <start_of_text> and <end_of_text> around each prompt,
    plus the parts of ftfy.fix_text that change ordinary prompts (quotes, ligatures). Prompts with mojibake, HTML
    entities or full-width characters may still tokenize differently from OpenCLIP's."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    with gzip.open(bpe_path) as f:
        merges_text = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in merges_text[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(pre_tokenizers.ByteLevel.alphabet())
    symbols = _bytes_to_unicode()
    assert sorted(symbols) == sorted(alphabet), "CLIP's byte symbols are GPT-2's"
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<start_of_text>", "<end_of_text>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                                     end_of_word_suffix="</w>", fuse_unk=False))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFC(),
        # What OpenCLIP's ftfy.fix_text does to ordinary prompts: curly quotes straightened, Latin ligatures split.
        normalizers.Replace(Regex("[\u02bc\u2018-\u201b]"), "'"), normalizers.Replace(Regex("[\u201c-\u201f]"), '"'),
        *(normalizers.Replace(ligature, letters) for ligature, letters in LIGATURES.items()),
        normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase(),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    start, end = vocab["<start_of_text>"], vocab["<end_of_text>"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>", special_tokens=[("<start_of_text>", start), ("<end_of_text>", end)]
    )
    tokenizer.add_special_tokens(["<start_of_text>", "<end_of_text>"])
    return tokenizer


def _bytes_to_unicode() -> list[str]:
    """OpenCLIP's (and GPT-2's) byte -> printable symbol table, in OpenCLIP's order (its vocabulary's first 256)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tokenizer_agreement(tokenizer, open_clip_tokenize, prompts: Sequence[str]) -> dict[str, object]:
    """Our tokenizer.json against OpenCLIP's own tokenizer, prompt by prompt (ids padded to 77 as OpenCLIP does)."""
    mismatches = []
    for prompt in prompts:
        ours = tokenizer.encode(prompt).ids
        theirs = [int(t) for t in open_clip_tokenize([prompt])[0] if int(t) != 0]
        if ours != theirs:
            mismatches.append({"prompt": prompt, "ours": ours, "open_clip": theirs})
    return {"prompts": len(prompts), "mismatches": mismatches}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help="OpenCLIP checkpoint file on disk (.bin, .pt, .safetensors)")
    source.add_argument("--random", action="store_true", help="random weights: checks the script, no weights needed")
    parser.add_argument("--model", default="ViT-B-32",
                        help="OpenCLIP architecture: ViT-B-32 (LAION weights) or ViT-B-32-quickgelu (OpenAI's)")
    parser.add_argument("--name", default="clip-vit-b-32", help="the card's model name (collections remember it)")
    parser.add_argument("--license", default="MIT", help="the weights' licence, for the card (default %(default)s)")
    parser.add_argument("--output", type=Path, default=HERE, help="folder to write into (default: this folder)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference ONNX vs PyTorch allowed")
    args = parser.parse_args(argv)
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights {args.weights} is not a file: give the checkpoint's path (nothing is downloaded)")

    import onnx
    import onnxruntime as ort
    import open_clip
    import torch

    torch.manual_seed(0)
    # nn.MultiheadAttention's inference fast path is one fused op the TorchScript exporter cannot write.
    torch.backends.mha.set_fastpath_enabled(False)
    model, _, _ = open_clip.create_model_and_transforms(
        args.model, pretrained=None if args.random else str(args.weights), device="cpu"
    )
    model.eval()
    preprocess = open_clip.get_model_preprocess_cfg(model)
    size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size)
    context = int(model.context_length)
    dimension = int(model.text_projection.shape[1] if not isinstance(model.text_projection, torch.nn.Linear)
                    else model.text_projection.out_features)
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(pixel_values)

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(input_ids)

    tokenizer = clip_tokenizer(Path(open_clip.tokenizer.default_bpe()))
    tokenizer.save(str(out / "tokenizer.json"))
    agreement = tokenizer_agreement(tokenizer, open_clip.get_tokenizer(args.model), PROMPTS)

    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.standard_normal((2, 3, size, size)).astype(np.float32))
    ids = np.zeros((len(PROMPTS), context), dtype=np.int64)
    for row, prompt in enumerate(PROMPTS):
        encoded = tokenizer.encode(prompt).ids
        ids[row, : len(encoded)] = encoded
    batch = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(ImageTower(), (pixels,), str(out / "image.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=["pixel_values"], output_names=["image_embedding"],
                          dynamic_axes={"pixel_values": batch, "image_embedding": batch}, do_constant_folding=True)
        torch.onnx.export(TextTower(), (torch.from_numpy(ids[:2]),), str(out / "text.onnx"), dynamo=False,
                          opset_version=OPSET, input_names=["input_ids"], output_names=["text_embedding"],
                          dynamic_axes={"input_ids": batch, "text_embedding": batch}, do_constant_folding=True)
        want_image = model.encode_image(pixels).numpy()
        want_text = model.encode_text(torch.from_numpy(ids)).numpy()
    for name in ("image.onnx", "text.onnx"):
        onnx.checker.check_model(str(out / name))
    providers = ["CPUExecutionProvider"]
    got_image = ort.InferenceSession(str(out / "image.onnx"), providers=providers).run(None, {"pixel_values":
                                                                                             pixels.numpy()})[0]
    got_text = ort.InferenceSession(str(out / "text.onnx"), providers=providers).run(None, {"input_ids": ids})[0]
    report = {
        "model": args.model, "weights": "random" if args.random else str(args.weights),
        "open_clip": open_clip.__version__, "torch": torch.__version__, "onnxruntime": ort.__version__,
        "max_abs_diff_image": float(np.abs(got_image - want_image).max()),
        "max_abs_diff_text": float(np.abs(got_text - want_text).max()),
        "tokenizer": agreement,
    }
    (out / "export-report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    weights = "random (--random: the vectors mean nothing)" if args.random else args.weights.name

    def scale(values: Sequence[float]) -> str:
        return ", ".join(f"{v * 255:.4f}" for v in values)

    (out / "card.toml").write_text(CARD.format(
        name=args.name, model=args.model, dimension=dimension, license=args.license, size=size,
        source=f"OpenCLIP {args.model}, weights {weights}; exported by models/clip-vit-b-32/export.py with "
               f"open_clip_torch {open_clip.__version__}, torch {torch.__version__}, ONNX opset {OPSET}",
        interpolation=preprocess.get("interpolation", "bicubic"), mean=scale(preprocess["mean"]),
        std=scale(preprocess["std"]), context=context,
    ))
    print(json.dumps(report, indent=2, ensure_ascii=False))
    worst = max(report["max_abs_diff_image"], report["max_abs_diff_text"])
    if worst > args.tolerance or agreement["mismatches"]:
        print(f"export check FAILED: max abs difference {worst:.2e} (tolerance {args.tolerance:.0e}), "
              f"{len(agreement['mismatches'])} tokenizer mismatches", file=sys.stderr)
        return 1
    print(f"wrote {out / 'card.toml'}; serve it with: lookalike serve --model-card {out / 'card.toml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
