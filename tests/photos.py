"""Real photos for tests and benchmarks: scikit-image's bundled pictures, written out as files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

# skimage's bundled photos that need no download (`cat` is `chelsea` again, so it is left out).
PHOTO_NAMES = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text",
)


def photo_array(name: str) -> np.ndarray:
    """One bundled photo as uint8, greyscale (H, W) or colour (H, W, 3|4)."""
    array = np.asarray(getattr(skimage.data, name)())
    if array.dtype != np.uint8:
        array = (array.astype(np.float64) / max(float(array.max()), 1.0) * 255).astype(np.uint8)
    return array


def write_photos(folder: Path) -> list[Path]:
    """Writes every photo as JPEG (PNG where it has alpha) and returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTO_NAMES:
        image = Image.fromarray(photo_array(name))
        if image.mode == "RGBA":
            path = folder / f"{name}.png"
            image.save(path)
        else:
            path = folder / f"{name}.jpg"
            image.save(path, quality=92)
        paths.append(path)
    return paths
