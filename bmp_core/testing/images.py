"""Small synthetic test images with people-like figures, generated in code (no files, no downloads).

For tests that need *an image* (decoding, the worker's read path, the loop with fake models) but not
a *real photo*: they run where the larger shared test set is absent (a plain clone). What the fake models find in them
is decided by the image's size and its non-black pixels (``bmp_core/testing/fakes.py``), so any
lit image works; the figures make them look like what they stand for when a test writes one out.
Tests of real-model accuracy still need the shared photos.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SyntheticImage:
    """Recipe of one synthetic image: ``file_name`` (its extension picks the format), size, figures."""

    file_name: str
    height: int
    width: int
    num_people: int
    seed: int


# A handful of sizes and formats, like a small input folder (JPEG and PNG, landscape and portrait).
SYNTHETIC_IMAGES = (
    SyntheticImage("street_a.jpg", 240, 320, 3, 0),
    SyntheticImage("street_b.jpg", 200, 300, 2, 1),
    SyntheticImage("portrait.png", 256, 160, 1, 2),
    SyntheticImage("crowd.jpg", 180, 360, 5, 3),
)


def _segment_mask(h: int, w: int, p: np.ndarray, q: np.ndarray, radius_px: float) -> np.ndarray:
    """(H, W) bool: pixels within ``radius_px`` of the segment p-q (a limb)."""
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    d = q - p
    t = np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return (xs - p[0] - t * d[0]) ** 2 + (ys - p[1] - t * d[1]) ** 2 <= radius_px**2


def synthetic_people_bgr(height: int, width: int, num_people: int = 2, seed: int = 0) -> np.ndarray:
    """An (H, W, 3) uint8 BGR image: a textured background and ``num_people`` stick figures.

    Deterministic in its arguments. Every pixel is lit (no pure black), as in a photo, so the fake
    detector's scores stay high until the loop blacks a person out.
    """
    rng = np.random.default_rng([seed, height, width])
    ys, xs = np.mgrid[:height, :width]
    image = np.empty((height, width, 3), np.float64)
    base = rng.uniform(90, 170, 3)
    for c in range(3):  # a soft gradient (sky to ground) plus noise, so JPEG has texture to encode
        image[:, :, c] = base[c] + 40 * (ys / max(height - 1, 1)) - 20 * (xs / max(width - 1, 1))
    image += rng.normal(0, 6, image.shape)
    for _ in range(num_people):
        person_h = rng.uniform(0.5, 0.9) * height
        cx = rng.uniform(0.15, 0.85) * width
        top = rng.uniform(0.02, 0.98) * (height - person_h)
        u = person_h / 8.0  # one "head" unit
        head = np.array([cx, top + 0.5 * u])
        neck, hip = np.array([cx, top + 1.2 * u]), np.array([cx, top + 4.2 * u])
        limbs = [  # (from, to, radius in head units)
            (neck, hip, 0.55),
            (neck + [0, 0.3 * u], np.array([cx - 1.6 * u, top + 3.6 * u]), 0.22),
            (neck + [0, 0.3 * u], np.array([cx + 1.6 * u, top + 3.6 * u]), 0.22),
            (hip, np.array([cx - 0.8 * u, top + 7.9 * u]), 0.28),
            (hip, np.array([cx + 0.8 * u, top + 7.9 * u]), 0.28),
        ]
        cloth = rng.uniform(20, 235, 3)
        for p, q, r in limbs:
            image[_segment_mask(height, width, p, q, r * u)] = cloth
        skin = np.array([120, 160, 210]) + rng.uniform(-25, 25, 3)  # BGR
        image[(xs - head[0]) ** 2 + (ys - head[1]) ** 2 <= (0.5 * u) ** 2] = skin
    return np.clip(np.round(image), 8, 255).astype(np.uint8)


def encode_image(image_bgr: np.ndarray, file_name: str) -> bytes:
    """The bytes of ``image_bgr`` as the format ``file_name``'s extension names (.jpg/.jpeg/.png)."""
    from PIL import Image

    ext = Path(file_name).suffix.lower()
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
    if ext not in formats:
        raise ValueError(f"unsupported extension {ext!r}; use one of {sorted(formats)}")
    buf = io.BytesIO()
    options = {"quality": 92} if formats[ext] == "JPEG" else {}
    Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1])).save(buf, format=formats[ext], **options)
    return buf.getvalue()


def synthetic_image_bytes(spec: SyntheticImage) -> bytes:
    """The encoded file of one recipe."""
    image = synthetic_people_bgr(spec.height, spec.width, spec.num_people, spec.seed)
    return encode_image(image, spec.file_name)


def write_synthetic_images(folder: Path, specs: tuple[SyntheticImage, ...] = SYNTHETIC_IMAGES) -> list[Path]:
    """Write the recipes' files into ``folder`` (created); returns their paths, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        path = folder / spec.file_name
        path.write_bytes(synthetic_image_bytes(spec))
        paths.append(path)
    return sorted(paths)
