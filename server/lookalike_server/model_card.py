"""The model card: what an ONNX image model expects and returns, read from a small TOML file."""

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
    return card
