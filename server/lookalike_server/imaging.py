"""Images become tensors: decode with Pillow, orient, flatten alpha, resize and normalise per the card."""

from __future__ import annotations

import functools
import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import _native
from .errors import InvalidArgument
from .model_card import ModelCard

_RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


# Our own pixel limit (max_pixels, checked before any pixel is decoded) replaces Pillow's global one,
# which only warns below twice its value.
Image.MAX_IMAGE_PIXELS = None
DEFAULT_MAX_PIXELS = 89_478_485


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_short_side: int = 0
) -> Image.Image:
    """Decodes bytes to an upright RGB image (EXIF orientation applied, alpha composited on white).

    With `min_short_side`, JPEGs are decoded in draft mode: scaled by 1/2, 1/4 or 1/8 inside the decoder,
    never below that size, which is several times faster than decoding every pixel and resizing.
    """
    if not data:
        raise InvalidArgument("empty image: no bytes were sent")
    # Pillow warns about damaged metadata (EXIF tags past the end, odd TIFF tags) and still decodes:
    # the image is served, the warning would only be noise on stderr. (catch_warnings swaps the global
    # filters; a race between decoding threads can at worst leave Pillow's warnings silenced.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _decode(data, max_pixels, min_short_side)


def _decode(data: bytes, max_pixels: int, min_short_side: int) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise InvalidArgument(
                    f"image of {img.width}x{img.height} pixels is over the limit of {max_pixels} pixels"
                )
            img.seek(0)  # animated GIF, multi-page TIFF: the first frame
            if min_short_side and img.format == "JPEG":
                scale = min_short_side / min(img.width, img.height)
                if scale < 1:
                    img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
            # The whole file in one decoder call: each call releases the GIL, and taking it back beside a busy
            # event loop costs up to a switch interval (5 ms); Pillow's default feeds it 64 KiB at a time.
            img.decodermaxblock = max(img.decodermaxblock, len(data))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an image already upright
            return _to_rgb(img)
    except InvalidArgument:
        raise
    except UnidentifiedImageError:
        raise InvalidArgument(
            f"cannot decode image: {len(data)} bytes in no format Pillow reads "
            f"(first bytes {data[:8].hex()})"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError, MemoryError) as e:
        raise InvalidArgument(f"cannot decode image: {e}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        return Image.fromarray((arr * (255.0 / top)).astype(np.uint8)).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


@functools.lru_cache(maxsize=8)
def _normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: channel c's byte v normalises to table[c, v], the same float32 (v - mean) / std."""
    values = np.arange(256, dtype=np.float32)[None, :]
    return (values - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]


def preprocess(img: Image.Image, card: ModelCard, out: np.ndarray | None = None) -> np.ndarray:
    """Resizes and crops as the card says and returns a float32 CHW tensor, normalised by mean/std.

    With `out` (a float32 (3, height, width) array, such as one row of a batch), the tensor is written there.
    """
    resample = _RESAMPLING[card.interpolation]
    if card.resize == "stretch":
        img = img.resize((card.width, card.height), resample)
    else:
        # Resize the shorter side to resize_to, then centre-crop: done in one step by resizing only the
        # source region that the crop keeps (a 20000x1 strip would otherwise become 5,120,000x256 first).
        scale = card.resize_to / min(img.width, img.height)
        crop_w, crop_h = min(img.width, card.width / scale), min(img.height, card.height / scale)
        left, top = (img.width - crop_w) / 2, (img.height - crop_h) / 2
        img = img.resize((card.width, card.height), resample, box=(left, top, left + crop_w, top + crop_h))
    pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    tensor = np.empty((3, *pixels.shape[:2]), dtype=np.float32) if out is None else out
    # A table lookup writes the normalised CHW tensor in one pass, natively and with the GIL held: numpy's
    # per-channel lookups (np.take) release it each time, and beside a busy event loop getting it back made
    # them 39 ms an image instead of 0.18.
    _native.pixels_to_tensor(pixels, _normalisation_table(card.mean, card.std), tensor)
    return tensor


def image_to_tensor(
    data: bytes, card: ModelCard, max_pixels: int = DEFAULT_MAX_PIXELS, out: np.ndarray | None = None
) -> np.ndarray:
    """Bytes to the network's input tensor for one image (written into `out` when given)."""
    short_side = card.resize_to if card.resize == "shorter_side" else max(card.height, card.width)
    return preprocess(decode_image(data, max_pixels, short_side), card, out)
