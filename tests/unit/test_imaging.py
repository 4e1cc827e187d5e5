"""Decoding and preprocessing: orientation, alpha, modes, and precise errors for bad bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lookalike_server.errors import InvalidArgument
from lookalike_server.imaging import decode_image, preprocess
from lookalike_server.model_card import load_model_card

CARD = load_model_card()


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif))
    assert decoded.size == (20, 40)


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP"), ("RGB", "TIFF")],
)
def test_every_common_mode_and_format_decodes_to_rgb(mode, fmt):
    image = Image.new(mode, (16, 12), 200 if mode in ("L", "P", "I;16") else (10, 20, 30) if mode == "RGB" else 0)
    decoded = decode_image(encode(image, fmt))
    assert decoded.mode == "RGB"
    assert decoded.size == (16, 12)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    array = np.linspace(0, 4000, 64, dtype=np.uint16).reshape(8, 8)
    decoded = np.asarray(decode_image(encode(Image.fromarray(array), "PNG")))
    assert decoded.max() == 255 and decoded.min() == 0
    assert len(np.unique(decoded)) > 10


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty"), (b"hello world, no image", "cannot decode"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "cannot decode")],
)
def test_bad_bytes_raise_invalid_argument(data, reason):
    with pytest.raises(InvalidArgument, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_refused():
    data = encode(Image.new("RGB", (200, 200), "blue"), "JPEG")
    with pytest.raises(InvalidArgument, match="cannot decode"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit():
    with pytest.raises(InvalidArgument, match="over the limit"):
        decode_image(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)


def test_preprocess_matches_the_card():
    image = Image.new("RGB", (640, 480), (127, 255, 0))
    tensor = preprocess(image, CARD)
    assert tensor.shape == (3, CARD.height, CARD.width)
    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    np.testing.assert_allclose(tensor[:, 100, 100], [(127 - 127) / 128, (255 - 127) / 128, (0 - 127) / 128])


def test_preprocess_centre_crops_after_resizing_the_shorter_side():
    # Left half black, right half white: after a centre crop both halves remain, split in the middle.
    array = np.zeros((100, 300, 3), dtype=np.uint8)
    array[:, 150:] = 255
    tensor = preprocess(Image.fromarray(array), CARD)
    row = tensor[0, CARD.height // 2]
    assert row[10] < 0 < row[-10]
    assert abs(int(np.argmax(row > 0)) - CARD.width // 2) <= 2


# EXIF orientation -> the transform that makes the stored pixels upright.
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(orientation):
    # Four coloured quadrants in a lossless PNG, so the check is exact.
    stored = np.zeros((20, 30, 3), dtype=np.uint8)
    stored[:10, :15] = (255, 0, 0)
    stored[:10, 15:] = (0, 255, 0)
    stored[10:, :15] = (0, 0, 255)
    stored[10:, 15:] = (255, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = np.asarray(decode_image(encode(Image.fromarray(stored), "PNG", exif=exif)))
    np.testing.assert_array_equal(decoded, _UPRIGHT[orientation](stored))


def test_animated_gif_and_multipage_tiff_use_the_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    tiff = io.BytesIO()
    frames[0].save(tiff, "TIFF", save_all=True, append_images=frames[1:])
    for data in (gif.getvalue(), tiff.getvalue()):
        first = np.asarray(decode_image(data))[4, 4]
        assert first[0] > 200 and first[2] < 50  # red, not the blue second frame


def test_content_decides_not_the_name():
    """A 'PNG' that is really a JPEG decodes as the JPEG it is; one that is nothing fails clearly."""
    jpeg = encode(Image.new("RGB", (16, 16), (0, 128, 255)), "JPEG")
    assert decode_image(jpeg).size == (16, 16)
    with pytest.raises(InvalidArgument, match="cannot decode"):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"not really a png at all")
