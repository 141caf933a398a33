"""Images on the device (edge_agent.imaging): PNG, PGM/PPM and .npy decoded in numpy against
files this test writes itself (zlib and the PNG filters written out plainly, and Pillow where it
happens to be installed), resizing against a plain loop, the statistics drift watches against
numpy and scipy, and every kind of bad image refused with a reason, never raised past it."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from edge_agent.errors import SensorLineError
from edge_agent.framing.watch import watched, watched_names
from edge_agent.imaging import (
    card_pixels,
    decode_image,
    encode_npy,
    image_stats,
    resize,
    scaled,
    stat_names,
    to_channels,
)
from edge_agent.imaging.libs import jpeg_size
from edge_agent.imaging.png import unfilter
from edge_agent.protocol.input_spec import ImageSpec, InputSpec
from tests.support.images import GRAY, GRAY_ALPHA, PALETTE, RGB, RGBA, chunk, filtered, png

RNG = np.random.default_rng(19)


def to_8bit(values: np.ndarray, maxval: int) -> np.ndarray:
    """Samples 0..maxval as 0..255, rounded half up."""
    return np.floor(values.astype(np.float64) * 255 / maxval + 0.5).astype(np.uint8)


def pixels(h: int, w: int, c: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


# ---- PNG -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("color", "samples", "keep"),
    [(GRAY, 1, 1), (RGB, 3, 3), (GRAY_ALPHA, 2, 1), (RGBA, 4, 3)],
    ids=["gray", "rgb", "gray-alpha", "rgba"],
)
@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (4, 3, 2, 1, 0)])
def test_png_8_bit_reads_back_what_was_written(
    color: int, samples: int, keep: int, filters: tuple[int, ...]
) -> None:
    values = pixels(7, 5, samples)
    got = decode_image(png(values, color, filters=filters, idat_parts=3))
    assert got.dtype == np.uint8 and got.shape == (7, 5, keep)
    assert np.array_equal(got, values[..., :keep])  # alpha dropped


@pytest.mark.parametrize(("color", "samples"), [(GRAY, 1), (RGB, 3), (RGBA, 4)])
def test_png_16_bit_is_read_to_8_bits_rounded(color: int, samples: int) -> None:
    values = RNG.integers(0, 65536, (4, 6, samples)).astype(np.uint16)
    values[0, 0, 0], values[0, 1, 0] = 65535, 0
    got = decode_image(png(values, color, depth=16))
    want = to_8bit(values[..., : min(samples, 3)], 65535)
    assert np.array_equal(got, want)


def test_png_palette_colors_are_looked_up() -> None:
    palette = pixels(1, 5, 3).reshape(5, 3)
    index = RNG.integers(0, 5, (6, 4, 1), dtype=np.uint8)
    got = decode_image(png(index, PALETTE, palette=palette))
    assert np.array_equal(got, palette[index[..., 0]])


def test_png_matches_pillow_where_it_is_installed() -> None:
    image_module = pytest.importorskip("PIL.Image")
    for mode, values in [("L", pixels(9, 11, 1)[..., 0]), ("RGB", pixels(9, 11, 3))]:
        out = io.BytesIO()
        image_module.fromarray(values, mode).save(out, "PNG", optimize=True)
        got = decode_image(out.getvalue())
        assert np.array_equal(got.reshape(values.shape), values)


def test_a_large_png_decodes_in_a_bounded_time() -> None:
    values = pixels(224, 224, 3)
    data = png(values, RGB, filters=(4, 3))
    start = time.process_time()
    assert np.array_equal(decode_image(data), values)
    assert time.process_time() - start < 2.0  # numpy along anti-diagonals, not a byte loop


def test_a_png_is_unfiltered_alike_in_bands_of_rows() -> None:
    values = pixels(100, 30, 3)
    raw = filtered(values.reshape(100, 90), 3, (4, 3, 0, 1, 2, 4, 4))
    whole = unfilter(raw, 100, 90, 3)
    assert np.array_equal(whole.reshape(100, 30, 3), values)
    for band_bytes in (1, 5000, 20000):  # bands of 8, 12 and 34 rows
        assert np.array_equal(unfilter(raw, 100, 90, 3, band_bytes), whole)


# ---- netpbm and .npy -------------------------------------------------------------------------


def test_pgm_and_ppm_read_with_comments_and_any_maxval() -> None:
    gray = RNG.integers(0, 17, (8, 8), dtype=np.uint8)  # the digits' 0..16
    pgm = b"P5\n# the digits\n8 8\n16\n" + gray.tobytes()
    assert np.array_equal(decode_image(pgm)[..., 0], to_8bit(gray, 16))
    rgb = pixels(3, 4, 3)
    assert np.array_equal(decode_image(b"P6 4 3 255\n" + rgb.tobytes()), rgb)
    wide = RNG.integers(0, 1001, (2, 3, 3)).astype(np.uint16)
    got = decode_image(b"P6\n3 2\n1000\n" + wide.astype(">u2").tobytes())
    assert np.array_equal(got, to_8bit(wide, 1000))


def test_npy_arrays_of_any_layout_and_type() -> None:
    rgba = pixels(5, 6, 4)
    assert np.array_equal(decode_image(encode_npy(rgba)), rgba[..., :3])
    gray = pixels(5, 6, 1)[..., 0]
    assert np.array_equal(decode_image(encode_npy(np.asfortranarray(gray)))[..., 0], gray)
    floats = RNG.uniform(0, 255, (4, 4, 3)).astype(np.float64)
    got = decode_image(encode_npy(floats))
    assert got.dtype == np.float32 and np.allclose(got, floats)


# ---- bad images: a reason each, never an exception past SensorLineError ----------------------


def refused(data: bytes, match: str, max_pixels: int = 4096 * 4096) -> None:
    with pytest.raises(SensorLineError, match=match) as info:
        decode_image(data, max_pixels)
    assert info.value.reason == "bad-image"


def test_a_png_cut_anywhere_is_refused() -> None:
    data = png(pixels(6, 6, 3), RGB)
    for cut in range(len(data) - 1):  # every prefix (the IEND chunk is 12 bytes)
        with pytest.raises(SensorLineError) as info:
            decode_image(data[:cut])
        assert info.value.reason == "bad-image", cut


def test_decompression_bombs_are_refused_before_inflating() -> None:
    # a header claiming 100000 x 100000 pixels in front of a few bytes
    head = chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, RGB, 0, 0, 0))
    bomb = b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    refused(bomb + chunk(b"IEND", b""), r"100000x100000 pixels: expected at most 16777216")
    refused(b"P5 100000 100000 255\n\0\0\0", r"100000x100000 pixels")
    big = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.uint8))
    big["shape"] = (100000, 100000)
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, big)
    refused(out.getvalue(), r"100000x100000 pixels")
    # a valid 64x64 image over a lower limit, and zlib data that inflates past the size
    refused(png(pixels(64, 64, 1), GRAY), r"64x64 pixels: expected at most 1000", 1000)
    head = chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, GRAY, 0, 0, 0))
    flood = chunk(b"IDAT", zlib.compress(b"\0" * 10_000_000))
    refused(b"\x89PNG\r\n\x1a\n" + head + flood + chunk(b"IEND", b""), r"more image data")


def test_what_the_png_reader_does_not_take_is_named() -> None:
    values = pixels(4, 4, 1)
    refused(png(values, GRAY, interlace=1), r"interlaced PNG \(Adam7\) is not read here")
    head = chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 4, GRAY, 0, 0, 0))
    refused(b"\x89PNG\r\n\x1a\n" + head, r"4-bit gray PNG: expected a bit depth of 8 or 16")
    refused(png(values, PALETTE), r"palette PNG without a PLTE chunk")
    palette = np.zeros((2, 3), np.uint8)
    refused(png(values, PALETTE, palette=palette), r"index \d+ beyond its 2 colors")
    refused(png(values, GRAY, extra=chunk(b"ZZZZ", b"?")), r"unexpected critical chunk 'ZZZZ'")
    data = bytearray(png(values, GRAY))
    data[40] ^= 0xFF
    refused(bytes(data), r"bad CRC")
    rows = filtered(values.reshape(4, 4), 1, (0,))
    bad_filter = bytes([7]) + rows[1:]
    head = chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, GRAY, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(bad_filter))
    refused(b"\x89PNG\r\n\x1a\n" + head + idat + chunk(b"IEND", b""), r"row 0: filter type 7")
    refused(
        b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", b"not zlib") + chunk(b"IEND", b""),
        r"does not inflate",
    )


def test_other_bad_images_are_named() -> None:
    refused(b"", r"an empty message")
    refused(b"P2 2 2 255\n1 2 3 4", r"expected binary P5 \(PGM\) or P6 \(PPM\)")
    refused(b"P5 4 4 255\n\0\0", r"truncated netpbm: 2 bytes of pixels, expected 16")
    refused(b"P5 4 x 255\n", r"netpbm header: expected width, height and maxval")
    refused(b"P5 1 1 16\n\x20", r"a sample of 32, above its maxval 16")
    refused(encode_npy(pixels(4, 4, 3))[:-5], r"truncated .npy")
    refused(encode_npy(np.zeros((2, 2, 2), np.uint8)), r"expected \(H, W\) or \(H, W, C\)")
    refused(encode_npy(np.full((2, 2), 300.0)), r"expected finite values from 0 to 255")
    refused(encode_npy(np.array([["a"]])), r"expected integer or float pixels")


def test_jpeg_and_other_formats_say_what_they_need() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + b"\0" * 20
    try:
        import PIL  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("Pillow is installed here: it reads what the base install refuses")
    try:
        import cv2  # noqa: F401
    except ImportError:
        refused(jpeg, r"a JPEG needs Pillow or OpenCV.*edgefleet\[camera\]")
    refused(b"GIF89a....", r"expected PNG, PGM/PPM, .npy or JPEG, got bytes starting b'GIF89a")


def test_the_size_of_a_jpeg_is_read_from_its_frame_header() -> None:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0" + b"\0" * 9
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 480, 640, 1) + b"\x01\x11\x00"
    assert jpeg_size(b"\xff\xd8" + app0 + sof + b"\xff\xd9") == (640, 480)
    with pytest.raises(SensorLineError, match="without a readable frame header"):
        jpeg_size(b"\xff\xd8" + app0)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300),
    st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"P5 ", b"P6\n4 ", b"\x93NUMPY"]),
)
def test_any_bytes_give_an_image_or_a_reason(data: bytes, prefix: bytes) -> None:
    try:
        got = decode_image(prefix + data)
    except SensorLineError as exc:
        assert exc.reason == "bad-image"
    else:
        assert got.ndim == 3 and got.shape[2] in (1, 3)


def test_any_cut_or_flipped_byte_of_a_png_gives_a_reason() -> None:
    data = png(pixels(5, 5, 3), RGB)
    rng = np.random.default_rng(3)
    for _ in range(300):
        broken = bytearray(data)
        broken[rng.integers(8, len(data))] = rng.integers(0, 256)
        try:
            decode_image(bytes(broken))
        except SensorLineError as exc:
            assert exc.reason == "bad-image"


# ---- resizing, channels, statistics ----------------------------------------------------------


def reference_resize(image: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Per output pixel, written out: the source point under its centre, then the nearest pixel
    or the four around it (clamped at the edges)."""
    h, w, c = image.shape
    out = np.zeros((height, width, c))
    for i in range(height):
        for j in range(width):
            y, x = (i + 0.5) * h / height, (j + 0.5) * w / width
            if mode == "nearest":
                out[i, j] = image[min(int(y), h - 1), min(int(x), w - 1)]
                continue
            y, x = min(max(y - 0.5, 0), h - 1), min(max(x - 0.5, 0), w - 1)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = (
                image[y0, x0] * (1 - dy) * (1 - dx)
                + image[y0, x1] * (1 - dy) * dx
                + image[y1, x0] * dy * (1 - dx)
                + image[y1, x1] * dy * dx
            )
    return out


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize(("src", "dst"), [((8, 8), (8, 8)), ((20, 13), (8, 8)), ((5, 3), (12, 7))])
def test_resize_matches_the_reference(
    mode: str, src: tuple[int, int], dst: tuple[int, int]
) -> None:
    image = pixels(*src, 3)
    got = resize(image, *dst, mode)
    assert got.dtype == np.float32 and got.shape == (*dst, 3)
    assert np.allclose(got, reference_resize(image, *dst, mode), atol=1e-3)


def test_halving_a_doubled_image_gives_it_back() -> None:
    image = pixels(8, 8, 1)
    doubled = image.repeat(2, axis=0).repeat(2, axis=1)
    assert np.array_equal(resize(doubled, 8, 8, "bilinear"), image.astype(np.float32))
    assert np.array_equal(resize(doubled, 8, 8, "nearest"), image.astype(np.float32))


def test_channels_convert_by_luma_and_repetition() -> None:
    rgb = pixels(3, 3, 3).astype(np.float32)
    gray = to_channels(rgb, 1)
    want = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert np.allclose(gray[..., 0], want, atol=1e-3)
    assert np.array_equal(to_channels(gray, 3), np.repeat(gray, 3, axis=2))
    spec = ImageSpec(4, 4, 1, "bilinear")
    assert card_pixels(pixels(8, 8, 3), spec).shape == (4, 4, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_image_statistics_against_numpy_and_scipy(channels: int) -> None:
    batch = pixels(10, 12, channels)[None].repeat(4, axis=0).astype(np.float32)
    batch[1] = 0  # all dark
    batch[2] = 255  # all bright
    batch[3, :6] = 255
    got = image_stats(batch)
    names = stat_names(channels)
    assert got.shape == (4, len(names))
    col = {name: got[:, i] for i, name in enumerate(names)}
    luma = batch[..., 0] if channels == 1 else batch @ np.array([0.299, 0.587, 0.114])
    for k, image in enumerate(batch):
        if channels == 1:
            assert np.isclose(col["mean"][k], image.mean(), rtol=1e-5)
            assert np.isclose(col["std"][k], image.std(), rtol=1e-4, atol=1e-4)
        else:
            for c, color in enumerate("rgb"):
                assert np.isclose(col[f"mean_{color}"][k], image[..., c].mean(), rtol=1e-5)
                assert np.isclose(col[f"std_{color}"][k], image[..., c].std(), rtol=1e-4)
            assert np.isclose(col["brightness"][k], luma[k].mean(), rtol=1e-4)
            assert np.isclose(col["contrast"][k], luma[k].std(), rtol=1e-3, atol=1e-3)
        laplace = ndimage.laplace(luma[k].astype(np.float64))[1:-1, 1:-1]
        assert np.isclose(col["sharpness"][k], laplace.var(), rtol=1e-3, atol=1e-3)
        assert np.isclose(col["clipped_dark"][k], np.mean(image == 0))
        assert np.isclose(col["clipped_bright"][k], np.mean(image == 255))
    assert col["clipped_dark"][1] == 1 and col["clipped_bright"][2] == 1
    assert col["sharpness"][1] == 0


def test_drift_watches_the_statistics_of_the_pixels_the_inputs_were_scaled_from() -> None:
    image = ImageSpec(8, 8, 1, "bilinear", scale=2 / 255, offset=-1.0)
    spec = InputSpec("image", (8, 8, 1), image=image)
    batch = pixels(8, 8, 1)[None].repeat(3, axis=0).astype(np.float32)
    assert watched_names(spec) == ["mean", "std", "sharpness", "clipped_dark", "clipped_bright"]
    assert np.allclose(watched(spec, scaled(batch, image)), image_stats(batch), rtol=1e-4)


def test_jpeg_through_pillow_where_it_is_installed() -> None:
    image_module = pytest.importorskip("PIL.Image")
    values = pixels(16, 24, 3)
    out = io.BytesIO()
    image_module.fromarray(values, "RGB").save(out, "JPEG", quality=90)
    data = out.getvalue()
    want = np.asarray(image_module.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(decode_image(data), want)
    refused(data, r"24x16 pixels: expected at most 100", 100)
    refused(data[: len(data) // 2], r"Pillow cannot read the image")
