"""The model card: what an ONNX image model (and its optional text tower) expects and returns, read from a
small TOML file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tomllib

# The default model ships inside the installed package; a source checkout keeps it at the top level.
_DEFAULT_MODEL = Path("models") / "efficientnet-lite0" / "card.toml"
_PACKAGED_CARD = Path(__file__).parent / _DEFAULT_MODEL
DEFAULT_CARD = _PACKAGED_CARD if _PACKAGED_CARD.is_file() else Path(__file__).parents[2] / _DEFAULT_MODEL
RESIZE_RULES = ("shorter_side", "stretch")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")
# "max_length": every prompt padded to the context length (networks with a fixed sequence, like OpenCLIP's
# export); "longest": to the longest prompt of the batch (networks that take any length and a mask).
PADDINGS = ("max_length", "longest")


@dataclass(frozen=True)
class TextTower:
    """A CLIP-style text encoder beside the image network: prompts to vectors of the same dimension.

    Prompts longer than `context_length` tokens (start and end tokens included) are refused, never cut.
    """

    model_path: Path
    tokenizer_path: Path
    input_ids: str
    attention_mask: str  # "" when the network takes no mask
    context_length: int
    padding: str
    pad_id: int
    output_name: str


@dataclass(frozen=True)
class ModelCard:
    name: str
    model_path: Path
    input_name: str
    height: int
    width: int
    resize: str
    resize_to: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output_name: str
    dimension: int
    license: str = ""
    source: str = ""
    description: str = ""
    text: TextTower | None = None


def load_model_card(path: Path | str | None = None) -> ModelCard:
    """Reads and checks a card; relative model files are resolved against the card's folder."""
    card_path = Path(path) if path else DEFAULT_CARD
    if not card_path.is_file():
        raise FileNotFoundError(f"model card {card_path} does not exist")
    with card_path.open("rb") as f:
        raw = tomllib.load(f)
    try:
        inp, out = raw["input"], raw["output"]
        height, width = (int(v) for v in inp["size"])
        card = ModelCard(
            name=str(raw["name"]),
            model_path=(card_path.parent / raw["file"]).resolve(),
            input_name=str(inp["name"]),
            height=height,
            width=width,
            resize=str(inp.get("resize", "shorter_side")),
            resize_to=int(inp.get("resize_to", max(height, width))),
            interpolation=str(inp.get("interpolation", "bilinear")),
            mean=tuple(float(v) for v in inp["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in inp["std"]),  # type: ignore[arg-type]
            output_name=str(out["name"]),
            dimension=int(out["dimension"]),
            license=str(raw.get("license", "")),
            source=str(raw.get("source", "")),
            description=str(raw.get("description", "")),
            text=_text_tower(card_path, raw["text"]) if "text" in raw else None,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"model card {card_path} is incomplete or malformed: {e!r}") from e
    if inp.get("layout", "NCHW") != "NCHW":
        raise ValueError(f"model card {card_path}: only NCHW input layout is supported")
    if card.resize not in RESIZE_RULES:
        raise ValueError(f"model card {card_path}: resize must be one of {RESIZE_RULES}, got {card.resize!r}")
    if card.interpolation not in INTERPOLATIONS:
        raise ValueError(f"model card {card_path}: interpolation must be one of {INTERPOLATIONS}")
    if len(card.mean) != 3 or len(card.std) != 3 or 0.0 in card.std:
        raise ValueError(f"model card {card_path}: mean and std need 3 values each, std non-zero")
    if not card.model_path.is_file():
        raise FileNotFoundError(f"model card {card_path} names {card.model_path}, which does not exist")
    if card.text is not None:
        _check_text_tower(card_path, card.text)
    return card


def _text_tower(card_path: Path, text: dict) -> TextTower:
    return TextTower(
        model_path=(card_path.parent / text["file"]).resolve(),
        tokenizer_path=(card_path.parent / text["tokenizer"]).resolve(),
        input_ids=str(text.get("input_ids", "input_ids")),
        attention_mask=str(text.get("attention_mask", "")),
        context_length=int(text["context_length"]),
        padding=str(text.get("padding", "max_length")),
        pad_id=int(text.get("pad_id", 0)),
        output_name=str(text["output"]),
    )


def _check_text_tower(card_path: Path, text: TextTower) -> None:
    """What can be checked without loading the networks (the embedder checks the rest at start-up)."""
    if text.padding not in PADDINGS:
        raise ValueError(f"model card {card_path}: [text] padding must be one of {PADDINGS}, got {text.padding!r}")
    if text.context_length < 2:
        raise ValueError(f"model card {card_path}: [text] context_length must be at least 2 (start and end "
                         f"tokens), got {text.context_length}")
    for what, path in (("text encoder", text.model_path), ("tokenizer", text.tokenizer_path)):
        if not path.is_file():
            raise FileNotFoundError(f"model card {card_path} names {path} as its {what}, which does not exist")


def cards_with_text(root: Path | None = None) -> list[Path]:
    """The cards under the models folder (the shipped one's) that declare a text tower, for error messages."""
    root = root or DEFAULT_CARD.parent.parent
    found = []
    for path in sorted(root.glob("*/card.toml")):
        try:
            with path.open("rb") as f:
                if "text" in tomllib.load(f):
                    found.append(path)
        except (OSError, tomllib.TOMLDecodeError):
            continue
    return found
