"""Image decoding: every bad input is a clear ImageDecodeError, every odd-but-valid one is normalised."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmp_core.io.images import ImageDecodeError, decode_image_bgr
from bmp_core.testing.images import SYNTHETIC_IMAGES, synthetic_image_bytes


def _encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand (independent of PIL's encoder); rows=None gives a header-only file."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    if rows is not None:
        out += _png_chunk(b"IDAT", zlib.compress(rows))
    return out + _png_chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am a text file\n" * 10, "not an image"),
        (_encode(Image.new("RGB", (1, 1)), "PNG"), "too small: 1x1"),
    ],
)
def test_bad_inputs_name_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image_bgr(data)


def test_truncated_jpeg() -> None:
    data = synthetic_image_bytes(SYNTHETIC_IMAGES[0])  # a JPEG
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image_bgr(data[: len(data) // 2])


def test_decompression_bomb_refused_from_the_header_alone() -> None:
    # 100,000 x 100,000 pixels declared, no pixel data: decoding would need 30 GB.
    bomb = _raw_png(100_000, 100_000, 8, 0, None)
    assert len(bomb) < 100
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image_bgr(bomb, max_pixels=100_000_000)


def test_pixel_limit_is_the_configured_one() -> None:
    data = _encode(Image.new("RGB", (200, 100)), "PNG")
    assert decode_image_bgr(data, max_pixels=20_000).shape == (100, 200, 3)
    with pytest.raises(ImageDecodeError, match="20000 > limit 19999"):
        decode_image_bgr(data, max_pixels=19_999)


def test_rgb_png_becomes_bgr() -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[..., 2] = 10
    out = decode_image_bgr(_encode(Image.fromarray(rgb), "PNG"))
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb[:, :, ::-1])


def test_cmyk_jpeg() -> None:
    cyan = Image.new("CMYK", (32, 24), (255, 0, 0, 0))
    out = decode_image_bgr(_encode(cyan, "JPEG", quality=95))
    b, g, r = out.reshape(-1, 3).mean(0)
    assert out.shape == (24, 32, 3)
    assert r < 30 and g > 225 and b > 225  # cyan = no red, full green and blue


def test_16bit_grayscale_png_is_scaled_not_clipped() -> None:
    rows = b"".join(b"\x00" + struct.pack(">" + "H" * 20, *([65535] * 10 + [32896] * 10)) for _ in range(20))
    out = decode_image_bgr(_raw_png(20, 20, 16, 0, rows))
    assert out.shape == (20, 20, 3)
    assert (out[:, :10] == 255).all() and (out[:, 10:] == 128).all()


def test_16bit_rgb_png() -> None:
    px = struct.pack(">HHH", 0xFF00, 0x8000, 0x0100)  # 16-bit R, G, B
    rows = b"".join(b"\x00" + px * 20 for _ in range(20))
    out = decode_image_bgr(_raw_png(20, 20, 16, 2, rows))
    np.testing.assert_allclose(out[0, 0].astype(int), [1, 128, 255], atol=1)  # B, G, R


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (0, 0, 255, 255)  # opaque blue
    rgba[:, 10:] = (0, 0, 0, 0)  # transparent black
    out = decode_image_bgr(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out[:, :10] == (255, 0, 0)).all()  # BGR blue
    assert (out[:, 10:] == 255).all()


def test_palette_with_transparency() -> None:
    im = Image.new("P", (20, 20), 0)
    im.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    out = decode_image_bgr(_encode(im, "PNG", transparency=0))
    assert (out == 255).all()


def test_grayscale_is_replicated() -> None:
    gray = np.arange(400, dtype=np.uint8).reshape(20, 20)
    out = decode_image_bgr(_encode(Image.fromarray(gray, "L"), "PNG"))
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_exif_rotated_jpeg_is_labeled_upright() -> None:
    # Stored 60 wide x 30 tall, left half red; EXIF orientation 6 = "rotate 90 deg clockwise to view".
    rgb = np.zeros((30, 60, 3), np.uint8)
    rgb[:, :30] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image_bgr(_encode(Image.fromarray(rgb), "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (60, 30, 3)  # upright: 30 wide, 60 tall
    # Rotating clockwise brings the stored left half to the top.
    assert out[:25, :, 2].mean() > 230 and out[35:, :, 2].mean() < 25


def test_real_test_image_matches_pil(testdata: Path) -> None:
    path = testdata / "ochuman" / "004806.jpg"
    if not path.is_file():  # a plain clone: the demo set's COCO photo
        path = testdata / "coco" / "000000000785.jpg"
    out = decode_image_bgr(path.read_bytes())
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB"))[:, :, ::-1]
    np.testing.assert_array_equal(out, expected)
