"""Fuzzing what clients control: image bytes through decode and preprocess, and the request validators.

Hypothesis, derandomised and bounded, so CI replays the same few hundred inputs per test in well under a
minute. Only two outcomes are allowed: a good result, or the documented error (InvalidArgument for
requests, ValueError for settings); any other exception, an escaping warning or a hang is a bug.

The bugs it found (a 20000x1 PNG resized to 5,120,000x256 before the crop; Pillow warnings escaping
decode; the mean of huge float32 vectors overflowing; unusable settings accepted) each keep a test with
the input that showed them.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import resource
import struct
import warnings
import zlib
from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from lookalike_server.config import METRICS, ServerConfig
from lookalike_server.errors import InvalidArgument
from lookalike_server.imaging import image_to_tensor
from lookalike_server.model_card import load_model_card
from lookalike_server.pipeline import check_id, vectors
from lookalike_server.store import ID_MAX_BYTES, CollectionSpec

FUZZ = settings(
    max_examples=300,
    deadline=2000,  # ms per example: a slower one is a hang
    derandomize=True,  # the same examples on every run and machine
    database=None,  # nothing written to .hypothesis/
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# A hang fails the test instead of stalling CI (each test here takes seconds).
pytestmark = pytest.mark.timeout(120)

CARD = load_model_card()
MAX_PIXELS = ServerConfig().max_image_pixels  # what the server passes unless configured otherwise
IMAGE_ERROR = re.compile(r"image|decode", re.IGNORECASE)
# The network sees 224x224: no intermediate of preprocessing needs more than this (64 MB as RGBA).
RESIZE_PIXEL_BUDGET = 16_000_000
# Declared-dimension bombs carry little data: decoding one may not raise the peak RSS by more than this.
BOMB_RSS_BUDGET_MIB = 512


# ---------------------------------------------------------------------------------------------------
# Images: the outcome check


class OversizedResize(AssertionError):
    """Preprocessing asked Pillow for an intermediate image over RESIZE_PIXEL_BUDGET."""


@contextlib.contextmanager
def resize_budget(limit: int = RESIZE_PIXEL_BUDGET) -> Iterator[None]:
    """Refuses, before allocating, any resize to more than `limit` pixels: fails fast, not after gigabytes."""
    original = Image.Image.resize

    def guarded(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        if size[0] * size[1] > limit:
            raise OversizedResize(
                f"resize of {self.width}x{self.height} to {size[0]}x{size[1]} is over the budget of {limit} pixels"
            )
        return original(self, size, *args, **kwargs)

    with mock.patch.object(Image.Image, "resize", guarded):
        yield


def decode_outcome(data: bytes, max_pixels: int | None = MAX_PIXELS) -> np.ndarray | InvalidArgument | None:
    """image_to_tensor on `data`, checked to be a good tensor or an InvalidArgument about the image.

    Warnings are recorded, not raised, so decoding runs on as it does in the server; any that come
    back are failures.
    """
    with warnings.catch_warnings(record=True) as caught, resize_budget():
        warnings.simplefilter("always")
        try:
            result: np.ndarray | InvalidArgument | None = image_to_tensor(data, CARD, max_pixels)
        except InvalidArgument as e:
            result = e
    if isinstance(result, InvalidArgument):
        assert IMAGE_ERROR.search(result.message), f"the error does not say what was wrong: {result.message!r}"
    elif isinstance(result, np.ndarray):
        assert result.dtype == np.float32, result.dtype
        assert result.shape == (3, CARD.height, CARD.width), result.shape
        assert np.isfinite(result).all(), "the tensor holds NaN or infinity"
    for w in caught:
        pytest.fail(f"a warning escaped decoding: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})")
    return result


# ---------------------------------------------------------------------------------------------------
# Images: what to feed it

MODES = {
    "JPEG": ("RGB", "L", "CMYK"),
    "PNG": ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"),
    "GIF": ("P", "L", "RGB", "RGBA"),
    "WEBP": ("RGB", "RGBA", "L"),
    "BMP": ("RGB", "RGBA", "L", "P", "1"),
    "TIFF": ("RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16", "I", "F"),
}
ANIMATED = ("PNG", "GIF", "WEBP", "TIFF")
TIFF_COMPRESSIONS = ("raw", "tiff_lzw", "tiff_deflate", "tiff_adobe_deflate", "packbits")


def _pixels(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 1 << 16, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-(1 << 31), 1 << 31, (height, width), dtype=np.int32))
    if mode == "F":
        values = rng.normal(scale=1000.0, size=(height, width)).astype(np.float32)
        values.flat[rng.integers(values.size)] = rng.choice([np.nan, np.inf, -np.inf, 0.0])
        return Image.fromarray(values)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


@st.composite
def encoded_images(draw: st.DrawFn) -> bytes:
    """A small, valid image in one of the formats and modes clients send, with the options that vary."""
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    width, height = draw(st.integers(1, 32)), draw(st.integers(1, 32))
    image = _pixels(mode, width, height, draw(st.integers(0, 2**32 - 1)))
    options: dict[str, object] = {}
    if fmt == "JPEG":
        options["quality"] = draw(st.integers(1, 95))
        options["progressive"] = draw(st.booleans())
    elif fmt == "WEBP":
        options["lossless"] = draw(st.booleans())
    elif fmt == "TIFF":
        options["compression"] = draw(st.sampled_from(TIFF_COMPRESSIONS))
    if fmt in ANIMATED and draw(st.booleans()):
        options["save_all"] = True
        options["append_images"] = [_pixels(mode, width, height, draw(st.integers(0, 2**32 - 1)))]
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and draw(st.booleans()):
        exif = Image.Exif()
        # libtiff refuses to write an orientation outside 1..8; the other writers copy the bytes as given.
        exif[0x0112] = draw(st.integers(1, 8) if fmt == "TIFF" else st.integers(0, 9))
        options["exif"] = exif
    return encode(image, fmt, **options)


EXTREMES = (b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff",
            b"\x7f\xff\xff\xff", b"\x00\x00\x01\x00", b"\x00\x01\x00\x00")


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image, then a few edits: flipped bytes, a truncation, a header from another format,
    inserted junk, or a length/size field set to an extreme."""
    data = bytearray(draw(encoded_images()))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(("flip", "truncate", "splice", "insert", "extreme")))
        if edit == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif edit == "truncate":
            del data[at:]
        elif edit == "splice":
            other = draw(encoded_images())
            cut = min(at + 1, len(other))
            data = bytearray(other[:cut]) + data[cut:] if draw(st.booleans()) else data[:cut] + other[cut:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            value = draw(st.sampled_from(EXTREMES))
            data[at : at + len(value)] = value
    return bytes(data)


MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM",
         b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00", b"P6\n", b"8BPS", b"\x00\x00\x00\x0cjP  ")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int, colour: int = 2, depth: int = 8, raw_bytes: int = 0) -> bytes:
    """A PNG whose IHDR says width x height, with `raw_bytes` of zero scanlines (zlib) behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(bytes(raw_bytes)))
            + _png_chunk(b"IEND", b""))


def _gif_declaring(data: bytes, width: int, height: int) -> bytes:
    gif = bytearray(data)
    gif[6:10] = struct.pack("<HH", width, height)  # logical screen
    at = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)
    while at < len(gif) and gif[at] == 0x21:  # skip extensions: label, then sub-blocks up to a zero
        at += 2
        while at < len(gif) and gif[at]:
            at += gif[at] + 1
        at += 1
    if at + 9 <= len(gif) and gif[at] == 0x2C:  # the first image descriptor
        gif[at + 5 : at + 9] = struct.pack("<HH", width, height)
    return bytes(gif)


def _tiff_declaring(data: bytes, width: int, height: int) -> bytes:
    tiff = bytearray(data)
    (ifd,) = struct.unpack_from("<I", tiff, 4)
    (count,) = struct.unpack_from("<H", tiff, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag = struct.unpack_from("<H", tiff, entry)[0]
        if tag in (256, 257):  # ImageWidth, ImageLength: one LONG
            struct.pack_into("<HII", tiff, entry + 2, 4, 1, width if tag == 256 else height)
    return bytes(tiff)


@st.composite
def declared_dimension_bombs(draw: st.DrawFn) -> bytes:
    """Small files whose headers claim anything from 1x1 to billions of pixels."""
    fmt = draw(st.sampled_from(("PNG", "GIF", "BMP", "TIFF")))
    top = {"PNG": 2**31 - 1, "GIF": 2**16 - 1, "BMP": 2**31 - 1, "TIFF": 2**32 - 1}[fmt]
    side = st.one_of(st.integers(1, 64), st.integers(1, 20_000), st.integers(1, top))
    width, height = draw(side), draw(side)
    if fmt == "PNG":
        colour, depth = draw(st.sampled_from([(0, 1), (0, 8), (0, 16), (2, 8), (2, 16), (3, 8), (4, 8), (6, 8),
                                              (6, 16)]))
        raw = draw(st.integers(0, 256 * 1024))
        return png_declaring(width, height, colour, depth, raw)
    small = _pixels(draw(st.sampled_from(MODES[fmt])), 4, 4, draw(st.integers(0, 2**32 - 1)))
    if fmt == "GIF":
        return _gif_declaring(encode(small, "GIF"), width, height)
    if fmt == "TIFF":
        return _tiff_declaring(encode(small, "TIFF"), width, height)
    bmp = bytearray(encode(small, "BMP"))
    struct.pack_into("<ii", bmp, 18, width, height if draw(st.booleans()) else -height)  # negative: top-down
    return bytes(bmp)


# ---------------------------------------------------------------------------------------------------
# Images: the properties


@FUZZ
@given(st.binary(max_size=4096) | st.builds(lambda m, b: m + b, st.sampled_from(MAGIC), st.binary(max_size=2048)))
@example(b"")
@example(b"\x00")
def test_arbitrary_bytes_decode_or_raise_invalid_argument(data):
    decode_outcome(data)


@FUZZ
@given(encoded_images(), st.just(MAX_PIXELS) | st.integers(1, 1024))
def test_valid_small_images_decode_unless_over_the_pixel_limit(data, max_pixels):
    with Image.open(io.BytesIO(data)) as image:
        pixels = image.width * image.height
    outcome = decode_outcome(data, max_pixels)
    if pixels > max_pixels:
        assert isinstance(outcome, InvalidArgument), f"{pixels} pixels passed a limit of {max_pixels}"
        assert "over the limit" in outcome.message, outcome.message
    else:
        assert isinstance(outcome, (np.ndarray, type(None))), f"a valid image was refused: {outcome}"


@FUZZ
@given(mutated_images(), st.sampled_from([MAX_PIXELS, 4_000_000]))
def test_mutated_images_decode_or_raise_invalid_argument(data, max_pixels):
    decode_outcome(data, max_pixels)


@FUZZ
@given(declared_dimension_bombs())
@example(png_declaring(100_000, 100_000))
@example(png_declaring(9459, 9459, raw_bytes=256 * 1024))  # just under the pixel limit, data cut short
@example(png_declaring(2**31 - 1, 2**31 - 1, colour=6, depth=16))
def test_huge_declared_dimensions_fail_fast_without_allocating(data):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    decode_outcome(data)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < BOMB_RSS_BUDGET_MIB, f"decoding {len(data)} bytes raised peak memory by {grown_mib:.0f} MiB"


def test_an_image_error_without_the_words_would_fail():
    """The outcome check itself: an error that does not say what was wrong is a failure."""
    with (
        mock.patch(f"{__name__}.image_to_tensor", side_effect=InvalidArgument("nope")),
        pytest.raises(AssertionError, match="does not say"),
    ):
        decode_outcome(b"x")
    with mock.patch(f"{__name__}.image_to_tensor", side_effect=KeyError(320)), pytest.raises(KeyError):
        decode_outcome(b"x")


# Pillow's warnings must not escape decode_image: under `-W error` they would be exceptions other than
# InvalidArgument, and in production they went to stderr, bypassing logging.


def _tiff_with_two_rows_per_strip() -> bytes:
    tiff = bytearray(encode(Image.new("L", (4, 4), 9), "TIFF"))
    (ifd,) = struct.unpack_from("<I", tiff, 4)
    (count,) = struct.unpack_from("<H", tiff, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack_from("<H", tiff, entry)[0] == 278:  # RowsPerStrip: two SHORTs instead of one
            struct.pack_into("<HIHH", tiff, entry + 2, 3, 2, 4, 4)
    return bytes(tiff)


def _jpeg_with_exif_make_past_the_end() -> bytes:
    # One IFD entry: Make (271), ASCII, 100 bytes at offset 1000 of a 26-byte EXIF block.
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 271, 2, 100, 1000) + struct.pack("<I", 0)
    return encode(Image.new("RGB", (8, 8)), "JPEG", exif=b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd)


def _ico_with_wrong_size() -> bytes:
    inner = encode(Image.new("RGB", (8, 8), "red"), "PNG")  # the directory says 16x16
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 22) + inner


def _png_with_zero_frame_actl() -> bytes:
    png = png_declaring(4, 4, raw_bytes=4 * 13)
    after_ihdr = 8 + 25
    return png[:after_ihdr] + _png_chunk(b"acTL", bytes(8)) + png[after_ihdr:]


PILLOW_WARNING_INPUTS = {
    # DecompressionBombWarning from Image.open, before decode_image's own max_pixels check runs: any
    # image between max_image_pixels (default 89,478,485 = Pillow's limit) and twice Pillow's limit.
    "png-9460x9460-over-the-pixel-limit": png_declaring(9460, 9460),
    # UserWarning "Tag data larger than file. Skipping tag 271" from ImageOps.exif_transpose -> getexif:
    # an otherwise good JPEG whose EXIF has a broken tag, as some cameras and editors write.
    "jpeg-exif-tag-past-the-end": _jpeg_with_exif_make_past_the_end(),
    # UserWarning "Metadata Warning, tag 278 had too many entries: 2, expected 1" (TiffImagePlugin).
    "tiff-rows-per-strip-with-two-entries": _tiff_with_two_rows_per_strip(),
    # UserWarning "Invalid APNG, will use default PNG image if possible" (PngImagePlugin).
    "png-actl-with-zero-frames": _png_with_zero_frame_actl(),
    # UserWarning "Image was not the expected size" (IcoImagePlugin).
    "ico-directory-says-16x16-png-is-8x8": _ico_with_wrong_size(),
}


@pytest.mark.parametrize("data", PILLOW_WARNING_INPUTS.values(), ids=PILLOW_WARNING_INPUTS.keys())
def test_pillow_warnings_do_not_escape_decoding(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            outcome: np.ndarray | InvalidArgument = image_to_tensor(data, CARD, MAX_PIXELS)
        except InvalidArgument as e:
            outcome = e
    if isinstance(outcome, InvalidArgument):
        assert IMAGE_ERROR.search(outcome.message)
    else:
        assert outcome.shape == (3, CARD.height, CARD.width)


def png_of_zeros(width: int, height: int) -> bytes:
    return png_declaring(width, height, colour=0, raw_bytes=height * (width + 1))


@pytest.mark.parametrize(
    "data",
    [
        # A 20000x1 PNG is 102 bytes, resized to 5,120,000x256 before the crop. Unguarded: 21 s and 5.2 GB
        # peak on 2 cores; 100000x1 or 1x100000 raise MemoryError (not InvalidArgument) or get the server
        # OOM-killed. Well under the pixel limit, so max_image_pixels does not help.
        pytest.param(png_of_zeros(20_000, 1), id="20000x1"),
        pytest.param(png_of_zeros(1, 20_000), id="1x20000"),
        pytest.param(png_of_zeros(2_000, 3), id="2000x3"),  # 6,000 pixels in, 43.7 M pixels resized
    ],
)
def test_any_aspect_ratio_preprocesses_within_the_pixel_budget(data):
    with resize_budget():
        tensor = image_to_tensor(data, CARD, MAX_PIXELS)
    assert tensor.shape == (3, CARD.height, CARD.width)


# ---------------------------------------------------------------------------------------------------
# Request validators


@FUZZ
@given(st.text(max_size=600) | st.text(st.characters(min_codepoint=0x80, codec="utf-8"), min_size=100, max_size=300))
@example("")
@example("a" * ID_MAX_BYTES)
@example("a" * (ID_MAX_BYTES + 1))
@example("é" * (ID_MAX_BYTES // 2))
@example("é" * (ID_MAX_BYTES // 2) + "a")
@example("\U0001f600" * (ID_MAX_BYTES // 4))
@example("\U0001f600" * (ID_MAX_BYTES // 4 + 1))
@example("\x00")
def test_check_id_accepts_exactly_1_to_512_utf8_bytes(item_id):
    size = len(item_id.encode("utf-8"))
    try:
        check_id(item_id)
        error = None
    except InvalidArgument as e:
        error = e
    assert (error is None) == (1 <= size <= ID_MAX_BYTES), f"an id of {size} bytes: {error or 'accepted'}"
    assert error is None or "id" in error.message


def specs() -> st.SearchStrategy[CollectionSpec]:
    return st.builds(
        CollectionSpec, name=st.just("fuzz"), metric=st.sampled_from(METRICS), index_type=st.just("FLAT"),
        model=st.just("fuzz-model"), dimension=st.integers(1, 16),
    )


# What the wire can carry: protobuf `float` is float32, so NaN, infinities, subnormals and FLT_MAX, no more.
FLT_MAX = float(np.finfo(np.float32).max)
FLOAT32 = st.floats(width=32) | st.sampled_from([FLT_MAX, -FLT_MAX, 1e38, -1e38, 1.4e-45, -0.0])


@st.composite
def vectors_for(draw: st.DrawFn, spec: CollectionSpec) -> list[float] | np.ndarray:
    length = draw(st.just(spec.dimension) | st.integers(0, 2 * spec.dimension + 2))
    values = draw(st.lists(FLOAT32, min_size=length, max_size=length))
    return np.asarray(values, dtype=np.float32) if draw(st.booleans()) else values  # the service sends arrays


def check_vector(values: object, spec: CollectionSpec) -> np.ndarray:
    return vectors.check_vector(values, spec)  # type: ignore[arg-type]


def assert_query_vector(out: np.ndarray, sent: np.ndarray, spec: CollectionSpec) -> None:
    """A finite float32 vector of the collection's dimension: the input, L2-normalised for cosine."""
    assert out.dtype == np.float32 and out.shape == (spec.dimension,), (out.dtype, out.shape)
    assert np.isfinite(out).all(), out
    if spec.metric != "cosine":
        np.testing.assert_array_equal(out, sent)
    elif not sent.any():
        assert not out.any(), "a zero vector did not stay zero"
    else:
        assert math.isclose(float(np.linalg.norm(out.astype(np.float64))), 1.0, abs_tol=1e-5), out


@FUZZ
@given(st.data(), specs())
def test_check_vector_returns_a_good_vector_or_invalid_argument(data, spec):
    values = data.draw(vectors_for(spec))
    sent = np.asarray(values, dtype=np.float32)
    good = len(sent) == spec.dimension and bool(np.isfinite(sent).all())
    try:
        out = check_vector(values, spec)
    except InvalidArgument as e:
        out = e
    if isinstance(out, InvalidArgument):
        assert not good, f"a good vector was refused: {out}"
    else:
        assert good, "a bad vector was accepted"
        assert_query_vector(out, sent, spec)


@pytest.mark.parametrize(
    "values",
    [[1.4e-45, 0.0, 0.0], [FLT_MAX, FLT_MAX, -FLT_MAX], [1e-40, -1e-40, 1e-38], [0.0, -0.0, 0.0]],
    ids=["smallest-subnormal", "flt-max-overflows-the-sum", "subnormals", "signed-zeros"],
)
def test_check_vector_normalises_extreme_float32_values(values):
    spec = CollectionSpec("fuzz", "cosine", "FLAT", "m", 3)
    assert_query_vector(check_vector(values, spec), np.asarray(values, dtype=np.float32), spec)


@FUZZ
@given(st.data(), specs())
def test_several_vectors_query_gives_a_good_vector_or_invalid_argument(data, spec):
    """Query.vectors: each vector is checked, then the mean is taken (pipeline.search.Searcher._query_vector)."""
    many = data.draw(st.lists(vectors_for(spec), min_size=1, max_size=4))
    if data.draw(st.booleans()):
        many = [many[0]] * len(many)  # the same vector sent more than once
    try:
        checked = [check_vector(v, spec) for v in many]
    except InvalidArgument:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = vectors.mean_of(checked, spec)
    assert not caught, [str(w.message) for w in caught]
    assert out.dtype == np.float32 and out.shape == (spec.dimension,) and np.isfinite(out).all(), out


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_mean_of_huge_vectors_is_refused_or_finite(metric):
    # Two finite float32 vectors (wire-valid) whose float32 sum overflows: the query becomes [inf],
    # and under -W error numpy's "overflow encountered in reduce" escapes as a RuntimeWarning.
    spec = CollectionSpec("fuzz", metric, "FLAT", "m", 1)
    checked = [check_vector([3e38], spec), check_vector([3e38], spec)]
    try:
        out = vectors.mean_of(checked, spec)
    except InvalidArgument:
        return
    assert np.isfinite(out).all(), out


def test_check_vector_refuses_python_floats_beyond_float32():
    # Not reachable over gRPC (protobuf floats are float32), but IngestItem.vector / Query.vector are
    # Sequence[float]: np.array(..., float32) warns "overflow encountered in cast" before the isfinite check.
    with pytest.raises(InvalidArgument, match="NaN or infinity"):
        check_vector([1e39, 0.0, 0.0], CollectionSpec("fuzz", "l2", "FLAT", "m", 3))


# ---------------------------------------------------------------------------------------------------
# Settings from the environment

INT_SETTINGS = ("max_batch_size", "decode_workers", "inference_threads", "max_message_bytes", "max_image_pixels",
                "ingest_window", "stream_window_bytes")
FLOAT_SETTINGS = ("max_queue_delay_ms", "max_connection_age_s")
BOOL_SETTINGS = ("milvus_tls", "require_gpu", "fp16")
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def env_values() -> st.SearchStrategy[str]:
    number = st.one_of(st.integers(-(10**30), 10**30).map(str), st.floats().map(repr))
    word = st.sampled_from([*TRUE_WORDS, *FALSE_WORDS, "TRUE", "Off", " 1", "1_000", "0x10", "nan", "-inf", "1e999",
                            "\u0661\u0662", "9" * 5000])
    return st.one_of(st.text(max_size=40), number, word)


@FUZZ
@given(st.sampled_from(INT_SETTINGS + FLOAT_SETTINGS + BOOL_SETTINGS), env_values())
def test_settings_from_the_environment_load_or_raise_value_error(name, raw):
    try:
        config = ServerConfig.load({}, env={f"LOOKALIKE_{name.upper()}": raw})
    except ValueError as e:
        config = e
    if isinstance(config, ValueError):
        assert name in str(config), f"the error does not name the setting: {config}"
        return
    value = getattr(config, name)
    if name in INT_SETTINGS:
        assert type(value) is int and value == int(raw)
    elif name in FLOAT_SETTINGS:
        assert type(value) is float and (value == float(raw) or math.isnan(value))
    else:
        assert value is (raw.lower() in TRUE_WORDS) and raw.lower() in TRUE_WORDS + FALSE_WORDS


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("max_connection_age_s", "inf"),  # LookalikeServer(): int(inf * 1000) -> OverflowError at start
        ("ingest_window", "0"),  # asyncio.Queue(0) has no bound: an Ingest stream is read without limit
        ("ingest_window", "-1"),
        ("stream_window_bytes", "1024"),  # below HTTP/2's initial window: every stream would crawl
        ("decode_workers", "-1"),  # Pipeline(): ThreadPoolExecutor(-1) -> ValueError at start, not at load
    ],
)
def test_settings_the_server_cannot_use_are_refused_at_load(name, raw):
    with pytest.raises(ValueError, match=name):
        ServerConfig.load({}, env={f"LOOKALIKE_{name.upper()}": raw})
