"""What the embedding benchmark's modules share: the venv's commands, the quiet-machine threshold, small helpers."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from common import ratio as ratio_of

_BENCH = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
QUIET_SHARE = 0.05  # most of the machine's CPU that other processes may use for a run to count as undisturbed


# The embedding JSONs give their ratios to three digits.
ratio = functools.partial(ratio_of, digits=3)


def check(value: float | None, op: str, target: float) -> dict:
    """A figure beside its target; pass is None when the figure could not be measured."""
    passed = None if value is None else {">=": value >= target, "<=": value <= target, "<": value < target}[op]
    return {"value": value, "target": f"{op} {target}", "pass": passed}


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

