"""Draw BMP labels on images and animate the loop's iterations (numpy + PIL only, no OpenCV).

Like the reference demo's pose and mask pictures (testdata/reference/004806_*.jpg): each person
gets one colour, used for its refined mask (alpha-blended), its COCO-17 skeleton (keypoints above a
score threshold) and its box with scores. ``iteration_frames`` turns the loop's ``IterationTrace``s
into one frame per pass: the detector's (masked-out) input with what the pass found, beside the
refined masks and poses of everyone found so far, the reference's ``--create-gif`` idea.

Drawn by an export policy (``draw_decided``; what ``bmp-label viz`` and the report show), the kept
people (the training targets) get colours and skeletons, the ignore regions a grey hatched mask and
nothing else, and dropped people are not drawn: the picture is what a trainer gets.

Score tags are placed where they overlap neither another tag nor the title (above the box, inside
its top, below it, inside its bottom), and left out where no place is free.

Pixels outside every mask, box outline, label, limb and keypoint are left untouched, so an overlay
can be compared with the original image (tests/unit/test_viz.py relies on it).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bmp_core.coco_meta import SKELETON
from bmp_core.records import Instances, IterationTrace

if TYPE_CHECKING:  # drawing needs no pyarrow/fsspec; only the type comes from the reader
    from bmp_core.output.reader import ImageLabels


# Saturated, mutually distinct RGB colours; the first two are the reference picture's pink and blue.
PALETTE_RGB = np.array(
    [
        (255, 40, 200), (40, 130, 255), (255, 200, 0), (0, 210, 110), (255, 90, 40), (150, 70, 255),
        (0, 220, 230), (230, 20, 60), (160, 230, 0), (255, 140, 200), (0, 120, 120), (200, 150, 90),
    ],
    np.uint8,
)


@dataclass(frozen=True)
class DrawStyle:
    """How overlays look. Sizes are in pixels of a 640-pixel-wide image and scale with the image.

    Attributes:
        keypoint_thr: keypoints scoring below this are not drawn, nor limbs touching them.
        mask_alpha: weight of the person colour over the image inside a mask.
        line_width: limb width.
        keypoint_radius: keypoint dot radius.
        box_width: box outline width.
        draw_masks / draw_pose / draw_boxes: which layers to draw.
        visibility_thr: a drawn keypoint whose predicted visibility is below this (occluded, where the
            model predicts visibility: PMPose, lite) is a hollow ring instead of a dot.
    """

    keypoint_thr: float = 0.3
    mask_alpha: float = 0.6  # the reference demo blends masks at 0.6 too
    line_width: int = 3
    keypoint_radius: int = 3
    box_width: int = 2
    draw_masks: bool = True
    draw_pose: bool = True
    draw_boxes: bool = True
    visibility_thr: float = 0.5


IGNORE_RGB = (128, 128, 128)  # ignore regions: grey, with darker diagonal stripes
IGNORE_STRIPE_RGB = (40, 40, 40)


def person_colors_rgb(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB, one per person, cycling ``PALETTE_RGB``."""
    return PALETTE_RGB[np.arange(n) % len(PALETTE_RGB)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _scale(image_hw: tuple[int, int]) -> float:
    # Line widths and fonts grow with the image so a 4000-pixel photo is as readable as a 640 one.
    return max(1.0, max(image_hw) / 640.0)


def blend_masks(image_rgb: np.ndarray, masks: np.ndarray, colors_rgb: np.ndarray, alpha: float) -> np.ndarray:
    """Tint each mask with its colour; later masks are drawn over earlier ones.

    Args:
        image_rgb: (H, W, 3) uint8.
        masks: (N, H, W) bool.
        colors_rgb: (N, 3) uint8.
        alpha: colour weight inside a mask, in [0, 1].

    Returns:
        (H, W, 3) uint8 copy; pixels outside every mask are unchanged.
    """
    out = image_rgb.astype(np.float32)
    for mask, color in zip(masks, colors_rgb, strict=True):
        out[mask] = (1.0 - alpha) * out[mask] + alpha * color.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def hatch_masks(image_rgb: np.ndarray, masks: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Grey hatching over the union of ``masks`` (ignore regions): a grey blend with dark stripes.

    Args:
        image_rgb: (H, W, 3) uint8.
        masks: (N, H, W) bool.
        alpha: grey weight inside the union.

    Returns:
        (H, W, 3) uint8 copy; pixels outside every mask are unchanged.
    """
    if masks is None or len(masks) == 0:
        return image_rgb
    union = np.any(masks, axis=0)
    if not union.any():
        return image_rgb
    h, w = union.shape
    period = max(6, round(10 * _scale((h, w))))
    ys, xs = np.ogrid[:h, :w]
    stripes = ((xs + ys) % period) < max(2, period // 3)
    out = image_rgb.astype(np.float32)
    grey = np.where(stripes[..., None], np.array(IGNORE_STRIPE_RGB, np.float32), np.array(IGNORE_RGB, np.float32))
    out[union] = (1.0 - alpha) * out[union] + alpha * grey[union]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_overlay(
    image_rgb: np.ndarray,
    boxes_xyxy: np.ndarray | None = None,
    keypoints: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    det_scores: np.ndarray | None = None,
    pose_scores: np.ndarray | None = None,
    style: DrawStyle | None = None,
    title: str | None = None,
    colors_rgb: np.ndarray | None = None,
    ignore_masks: np.ndarray | None = None,
    keypoint_visibility: np.ndarray | None = None,
) -> np.ndarray:
    """Draw N people on an image: masks, skeletons, boxes with scores, and an optional title.

    Every per-person array is optional (None: that layer is skipped) but those given share N.
    ``ignore_masks`` (M, H, W) bool are drawn first, as grey hatching (``hatch_masks``), under the
    people.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        boxes_xyxy: (N, 4) float pixel corners; NaN rows are skipped.
        keypoints: (N, 17, 3) float ``(x, y, score)`` pixels.
        masks: (N, H, W) bool.
        det_scores: (N,) detector scores, printed on the box label as ``d``.
        pose_scores: (N,) pose scores, printed on the box label as ``p``.
        style: drawing options (``DrawStyle()`` when None).
        title: text drawn at the top-left, as the reference demo does.
        colors_rgb: (N, 3) uint8 person colours; ``person_colors_rgb(N)`` when None.
        keypoint_visibility: (N, 17) predicted visibility (NaN or None: not predicted, all drawn solid).

    Returns:
        (H, W, 3) uint8 RGB copy.
    """
    style = style or DrawStyle()
    n = next((len(a) for a in (boxes_xyxy, keypoints, masks) if a is not None), 0)
    colors = person_colors_rgb(n) if colors_rgb is None else np.asarray(colors_rgb, np.uint8)
    out = image_rgb
    if ignore_masks is not None and len(ignore_masks):
        out = hatch_masks(out, ignore_masks)
    if style.draw_masks and masks is not None and len(masks):
        out = blend_masks(out, masks, colors, style.mask_alpha)
    canvas = Image.fromarray(np.ascontiguousarray(out))
    draw = ImageDraw.Draw(canvas)
    scale = _scale(image_rgb.shape[:2])
    taken: list[tuple[float, float, float, float]] = []  # tag and title rectangles, never overlapped
    if title:
        font = _font(int(18 * scale))
        stroke = max(1, int(scale))
        origin = (6 * scale, 4 * scale)
        x0, y0, x1, y1 = draw.textbbox(origin, title, font=font, stroke_width=stroke)
        taken.append((x0 - 3 * scale, y0 - 2 * scale, x1 + 3 * scale, y1 + 2 * scale))  # with its dark tab
    if style.draw_boxes and boxes_xyxy is not None:
        _draw_outlines(draw, boxes_xyxy, colors, style, scale)
    if style.draw_pose and keypoints is not None:
        occluded = np.zeros(np.shape(keypoints)[:2], bool)
        if keypoint_visibility is not None:
            occluded = np.asarray(keypoint_visibility, np.float32) < style.visibility_thr  # NaN: False
        for person, color, hollow in zip(keypoints, colors, occluded, strict=True):
            _draw_skeleton(draw, person, tuple(int(c) for c in color), style, scale, hollow)
    if style.draw_boxes and boxes_xyxy is not None:  # tags over every line, so none is crossed out
        _draw_tags(draw, boxes_xyxy, colors, det_scores, pose_scores, scale, taken, canvas.size)
    if title:  # last, on a dark tab: readable on snow as on shadow
        draw.rectangle(taken[0], fill=(0, 0, 0))
        draw.text(origin, title, fill=(255, 255, 0), font=font, stroke_width=stroke, stroke_fill=(0, 0, 0))
    return np.asarray(canvas)


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_outlines(
    draw: ImageDraw.ImageDraw, boxes_xyxy: np.ndarray, colors: np.ndarray, style: DrawStyle, scale: float
) -> None:
    for box, color in zip(boxes_xyxy, colors, strict=True):
        if np.all(np.isfinite(box)):
            x1, y1, x2, y2 = (float(v) for v in box)
            draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=tuple(int(c) for c in color),
                           width=int(style.box_width * scale))


def _draw_tags(
    draw: ImageDraw.ImageDraw,
    boxes_xyxy: np.ndarray,
    colors: np.ndarray,
    det_scores: np.ndarray | None,
    pose_scores: np.ndarray | None,
    scale: float,
    taken: list[tuple[float, float, float, float]],
    image_wh: tuple[int, int],
) -> None:
    """Score tags, each at its first free place (``taken``: rectangles in use, appended to)."""
    font = _font(int(12 * scale))
    width, height = image_wh
    for i, (box, color) in enumerate(zip(boxes_xyxy, colors, strict=True)):
        parts = []
        if det_scores is not None:
            parts.append(f"d{float(det_scores[i]):.2f}")
        if pose_scores is not None:
            parts.append(f"p{float(pose_scores[i]):.2f}")
        if not parts or not np.all(np.isfinite(box)):
            continue
        # A filled tab: above the box, else inside its top, below it, inside its bottom; the first
        # place that overlaps no earlier tag (nor the title) and lies in the image.
        x1, y1, _, y2 = (float(v) for v in box)
        text = " ".join(parts)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4 * scale, bottom - top + 2 * scale
        tx = min(max(x1, 0.0), max(width - tw, 0.0))
        for ty in (y1 - th, y1, y2, y2 - th):
            tab = (tx, ty, tx + tw, ty + th)
            if ty >= 0 and ty + th <= height and not any(_overlaps(tab, t) for t in taken):
                break
        else:
            continue  # no free place: no tag rather than an unreadable pile
        taken.append(tab)
        draw.rectangle(tab, fill=tuple(int(c) for c in color))
        draw.text((tx + 2 * scale, ty + scale - top), text, fill=(0, 0, 0), font=font)


def _draw_skeleton(
    draw: ImageDraw.ImageDraw, keypoints: np.ndarray, color: tuple[int, ...], style: DrawStyle, scale: float,
    hollow: np.ndarray | None = None,
) -> None:
    """Limbs whose both ends score >= the threshold, then those keypoints as dots (``hollow``: (17,) bool,
    rings for the occluded ones)."""
    visible = (keypoints[:, 2] >= style.keypoint_thr) & np.all(np.isfinite(keypoints[:, :2]), axis=1)
    width = max(1, round(style.line_width * scale))
    for a, b in SKELETON:
        if visible[a - 1] and visible[b - 1]:
            (xa, ya), (xb, yb) = keypoints[a - 1, :2], keypoints[b - 1, :2]
            draw.line((float(xa), float(ya), float(xb), float(yb)), fill=color, width=width)
    r = style.keypoint_radius * scale
    rings = np.zeros(len(keypoints), bool) if hollow is None else np.asarray(hollow, bool)
    for (x, y), ring in zip(keypoints[visible, :2], rings[visible], strict=True):
        if ring:  # occluded: a ring in the person's colour, its rim dark like a dot's
            draw.ellipse((x - r, y - r, x + r, y + r), fill=None, outline=color, width=max(1, round(scale)))
            continue
        # A dark rim keeps a dot visible on a mask of its own colour.
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color, outline=(0, 0, 0))


def draw_instances(
    image_rgb: np.ndarray, instances: Instances, style: DrawStyle | None = None, title: str | None = None
) -> np.ndarray:
    """``draw_overlay`` for the loop's ``Instances`` (refined masks, detector boxes, both scores).

    Args:
        image_rgb: (H, W, 3) uint8 RGB, the image ``instances`` were found in.
        instances: N people.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    return draw_overlay(
        image_rgb, instances.boxes_xyxy, instances.keypoints, instances.masks,
        instances.det_scores, instances.pose_scores, style, title, keypoint_visibility=instances.keypoint_visibility,
    )


def draw_labels(
    image_rgb: np.ndarray, labels: ImageLabels, style: DrawStyle | None = None, title: str | None = None
) -> np.ndarray:
    """``draw_overlay`` for one image's labels read back from an output (``bmp_core.output.reader.image_labels``)."""
    return draw_overlay(
        image_rgb, labels.boxes_xyxy, labels.keypoints, labels.masks, labels.det_scores, labels.pose_scores,
        style, title, keypoint_visibility=labels.keypoint_visibility,
    )


def draw_decided(
    image_rgb: np.ndarray,
    labels: ImageLabels,
    keep: np.ndarray,
    ignore: np.ndarray,
    style: DrawStyle | None = None,
    title: str | None = None,
) -> np.ndarray:
    """The labels a trainer gets: kept people in colour (mask, skeleton, box, tag), ignore regions as
    grey hatching (no skeleton, box or tag), the rest not drawn.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        labels: one image's labels (all its people).
        keep, ignore: (N,) bool, from the export policy's decisions (``Decision.KEEP`` / ``IGNORE``).
        style: drawing options; its ``keypoint_thr`` should be the policy's (keypoints below it are
            unlabeled in the export, so not drawn).
        title: drawn at the top-left.
    """
    keep, ignore = np.asarray(keep, bool), np.asarray(ignore, bool)
    return draw_overlay(
        image_rgb, labels.boxes_xyxy[keep], labels.keypoints[keep], labels.masks[keep], labels.det_scores[keep],
        labels.pose_scores[keep], style, title, ignore_masks=labels.masks[ignore],
        keypoint_visibility=None if labels.keypoint_visibility is None else labels.keypoint_visibility[keep],
    )


def iteration_frames(
    image_rgb: np.ndarray,
    traces: Sequence[IterationTrace],
    instances: Instances,
    style: DrawStyle | None = None,
    max_width: int = 1280,
    keep: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
) -> list[np.ndarray]:
    """One frame per BMP pass, for a GIF: what the detector saw and found | everyone found so far.

    Left panel: the pass's detector input (the image with earlier people blacked out) with this
    pass's detections (boxes, detector masks). Right panel: the original image with the refined
    masks and skeletons of the final instances found in this pass or earlier (instances that a
    later pass's pose-NMS removed are not in ``instances`` and so are not shown).

    Args:
        image_rgb: (H, W, 3) uint8 RGB original image.
        traces: the loop's traces, one per pass, in order.
        instances: the final instances of the image (their ``iteration`` field picks the panel).
        style: drawing options.
        max_width: frames wider than this are downscaled (GIFs of two full-size photos are huge).
        keep, ignore: (N,) bool over ``instances``, an export policy's decisions: the right panel
            then draws as ``draw_decided`` (kept in colour, ignore regions hatched, the rest not
            drawn). None: everyone in colour.

    Returns:
        len(traces) frames, (H', W', 3) uint8 RGB, all the same size.
    """
    style = style or DrawStyle()
    n = len(instances)
    keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
    ignore = np.zeros(n, bool) if ignore is None else np.asarray(ignore, bool)
    colors = np.zeros((n, 3), np.uint8)
    colors[keep] = person_colors_rgb(int(keep.sum()))  # a kept person keeps its colour in every frame
    frames = []
    for trace in traces:
        dets = trace.detections
        so_far = instances.iteration <= trace.iteration
        found = instances.take(np.flatnonzero(so_far & keep))
        ignored_masks = instances.masks[so_far & ignore]
        left = draw_overlay(
            np.ascontiguousarray(trace.detector_input_bgr[:, :, ::-1]), dets.boxes_xyxy, None, dets.masks,
            dets.scores, None, style, title=f"pass {trace.iteration + 1}: detector input, {len(dets)} found",
            colors_rgb=np.full((len(dets), 3), 255, np.uint8),  # white: detections are not yet people
        )
        right = draw_overlay(
            image_rgb, found.boxes_xyxy, found.keypoints, found.masks, found.det_scores, found.pose_scores,
            style, colors_rgb=colors[so_far & keep], ignore_masks=ignored_masks,
            keypoint_visibility=found.keypoint_visibility,
            title=f"after pass {trace.iteration + 1}: +{trace.num_new} new, -{trace.num_removed_old} old",
        )
        frames.append(_fit_width(np.concatenate([left, right], axis=1), max_width))
    return frames


def _fit_width(frame_rgb: np.ndarray, max_width: int) -> np.ndarray:
    h, w = frame_rgb.shape[:2]
    if w <= max_width:
        return frame_rgb
    size = (max_width, max(1, round(h * max_width / w)))
    return np.asarray(Image.fromarray(frame_rgb).resize(size, Image.Resampling.LANCZOS))


def save_gif(frames_rgb: Sequence[np.ndarray], path: str | Path | io.BytesIO, frame_ms: int = 1500) -> None:
    """Write frames as a looping GIF.

    Pillow merges consecutive identical frames into one longer frame; ``iteration_frames`` titles
    each frame with its pass number, so a GIF of its frames has exactly one frame per pass.

    Args:
        frames_rgb: (H, W, 3) uint8 RGB frames of one size.
        path: the .gif file, or a binary buffer.
        frame_ms: display time of each frame.
    """
    if not frames_rgb:
        raise ValueError("a GIF needs at least one frame")
    # One palette per frame (median cut): masks and the photo need more than a fixed web palette.
    images = [Image.fromarray(f).quantize(colors=255, method=Image.Quantize.MEDIANCUT) for f in frames_rgb]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)


def encode_gif(frames_rgb: Sequence[np.ndarray], frame_ms: int = 1500) -> bytes:
    """``save_gif`` into bytes (for writing to S3)."""
    buf = io.BytesIO()
    save_gif(frames_rgb, buf, frame_ms)
    return buf.getvalue()


def encode_image(image_rgb: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG or PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image_rgb).save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def contact_sheet(images_rgb: Sequence[np.ndarray], columns: int = 2, width: int = 1200,
                  gap: int = 4) -> np.ndarray:
    """Tile pictures into one (``bmp-label viz --sheet``): ``columns`` per row, each scaled to the
    column width, rows as tall as their tallest picture, white gaps.

    Args:
        images_rgb: (H_i, W_i, 3) uint8 pictures, in reading order.
        columns: pictures per row.
        width: the sheet's width in pixels.
        gap: white pixels between pictures.

    Returns:
        (H, width, 3) uint8 RGB.
    """
    if not images_rgb:
        raise ValueError("a contact sheet needs at least one picture")
    columns = max(1, min(columns, len(images_rgb)))
    cell = (width - gap * (columns - 1)) // columns
    tiles = []
    for image in images_rgb:
        h, w = image.shape[:2]
        size = (cell, max(1, round(h * cell / w)))
        tiles.append(np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)))
    rows = []
    for r in range(0, len(tiles), columns):
        row_tiles = tiles[r:r + columns]
        height = max(t.shape[0] for t in row_tiles)
        row = np.full((height, width, 3), 255, np.uint8)
        for c, tile in enumerate(row_tiles):
            x = c * (cell + gap)
            row[: tile.shape[0], x:x + cell] = tile
        rows.append(row)
    spacer = np.full((gap, width, 3), 255, np.uint8)
    return np.concatenate([part for row in rows for part in (row, spacer)][:-1], axis=0)


def thumbnail(image_rgb: np.ndarray, max_side: int) -> np.ndarray:
    """(H, W, 3) uint8 downscaled so that its longer side is at most ``max_side``."""
    h, w = image_rgb.shape[:2]
    if max(h, w) <= max_side:
        return image_rgb
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(image_rgb).resize(size, Image.Resampling.LANCZOS))
