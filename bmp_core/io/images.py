"""Decode image bytes into the (H, W, 3) uint8 BGR arrays every model port takes.

Decoding is where bad inputs show up, so every way an input can be unusable ends here as an
``ImageDecodeError`` whose message is the reason stored in the ``images`` table: zero bytes, not an
image, truncated data, too small, too many pixels (decompression bombs). Unusual but valid images
are normalised instead of refused: EXIF orientation is applied (we label the upright image, the one
every viewer shows), CMYK and palette images become RGB, 16-bit images are scaled to 8 bits,
alpha is composited on white, grayscale is replicated to three channels.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bmp_core.errors import ImageInputError

DEFAULT_MAX_PIXELS = 100_000_000  # mirrors JobConfig.max_image_pixels
DEFAULT_MIN_SIDE = 16  # mirrors JobConfig.min_image_side

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MIN_SIDE", "ImageDecodeError", "ImageInputError", "decode_image_bgr"]


class ImageDecodeError(ImageInputError):
    """The bytes are not a usable image; ``str(err)`` is the reason for the ``images`` table."""


def decode_image_bgr(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE
) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, TIFF, WebP, BMP...) to BGR.

    Args:
        data: the file's bytes.
        max_pixels: refuse images with more than this many pixels, checked from the header before
            any pixel is decoded (a 50,000 x 50,000 PNG is a few hundred KB on disk).
        min_side: refuse images whose width or height is below this (nobody can be labeled in
            them; a 1x1 image is usually a tracking pixel or a broken export).

    Returns:
        (H, W, 3) uint8 BGR, C-contiguous, upright (EXIF orientation applied).

    Raises:
        ImageDecodeError: with a one-line reason.
    """
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    im = _open_checked(data, max_pixels)
    try:
        im.load()
        im = ImageOps.exif_transpose(im)  # sizes were checked above; the transpose only swaps them
    except (OSError, SyntaxError, ValueError) as err:
        # PIL raises OSError("image file is truncated ...") / "broken data stream" for cut files.
        raise ImageDecodeError(f"truncated or corrupt image data ({err})") from err
    width, height = im.size
    if width < min_side or height < min_side:
        raise ImageDecodeError(f"image too small: {width}x{height} pixels (minimum side {min_side})")
    rgb = _to_rgb_uint8(im)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse a pixel count over ``max_pixels`` before decoding anything."""
    try:
        with warnings.catch_warnings():
            # PIL warns above its own global limit; we apply ours, so its warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"too many pixels, refused as a possible decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(f"not an image (unrecognised format, {len(data)} bytes)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"corrupt image header ({err})") from err
    width, height = im.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"too many pixels: {width}x{height} = {width * height} > limit {max_pixels} "
            "(job.max_image_pixels; refused as a possible decompression bomb)"
        )
    return im


def _to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any PIL mode."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: PIL's convert("RGB") would clip at 255, so scale 0..65535 -> 0..255.
        gray = np.asarray(im).astype(np.float64)
        gray8 = np.clip(np.round(gray / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if mode == "F":
        gray8 = np.clip(np.round(np.asarray(im, np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite on white: what a viewer shows, and it keeps hidden RGB garbage (often black
        # under alpha 0) from looking like the blacked-out regions of the BMP loop.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode != "RGB":
        im = im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return np.asarray(im)
