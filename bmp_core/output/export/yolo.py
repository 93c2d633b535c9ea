"""``--format yolo-pose`` / ``yolo-seg``: the Ultralytics YOLO dataset layout, without copying images.

::

    DEST/data.yaml                   path, train, val, names {0: person}; pose: kpt_shape [17, 3], flip_idx
    DEST/train.txt, DEST/val.txt     one image per line (Ultralytics reads list files)
    DEST/labels/{train,val}/NAME.txt one line per kept person, coordinates normalised to [0, 1]
    DEST/images/{train,val}/NAME.EXT symlinks to the source images (``link: symlink``, local data only)
    DEST/images.csv                  NAME, split, source URI of every exported image

``NAME`` is ``<image_id, 9 digits>_<file stem>``: unique even when two folders hold the same file name.
Ultralytics finds an image's labels by replacing ``/images/`` with ``/labels/`` in its path, so with
symlinks the list files name ``./images/<split>/NAME.EXT`` and it trains as is. Without them
(``link: list``: S3 sources, or a DEST elsewhere), the list files hold the source URIs; put the
images under ``DEST/images/<split>/NAME.EXT`` (``images.csv`` says which is which) before training.

Lines: pose ``0 cx cy w h x1 y1 v1 ... x17 y17 v17`` (box: tight box of the mask, else the detector
box, clipped to the image; ``v`` = the policy's flag (2 visible, 1 present but occluded; without
predicted visibility 2 at or above ``keypoint_thr``) for a labeled keypoint inside the image, else
``0 0 0``); seg ``0 x1 y1 x2 y2 ...``: ONE polygon per person (``bmp_core.ops.polygons.mask_polygon``:
the outer boundary of the largest part, other parts and holes joined by zero-width bridges, so
filling it gives back the mask's parts and holes; Douglas-Peucker at ``polygon_tolerance_px``).

YOLO has no ignore regions. The rule (``ExportPolicy.max_ignore_fraction``): an image whose ignore
regions cover more than that fraction of its area is left out (``format_dropped.images_ignore_area``),
otherwise its ignored people are left out of the labels (``format_dropped.ignored_people_omitted``),
i.e. taught as background: the fraction bounds how much unsure person area that can be.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from bmp_core.coco_meta import FLIP_INDICES, NUM_KEYPOINTS
from bmp_core.io.uris import protocol_of
from bmp_core.ops.polygons import mask_polygon
from bmp_core.ops.rle import decode_rle
from bmp_core.output.export.coco import coco_boxes_xywh
from bmp_core.output.export.policy import Decision, ExportPolicy
from bmp_core.output.export.source import ExportShard
from bmp_core.output.tables import keypoints_array, rles_of

KIND_POSE = "pose"
KIND_SEG = "seg"
LINK_SYMLINK = "symlink"
LINK_LIST = "list"
LINK_AUTO = "auto"
DATA_YAML = "data.yaml"
IMAGES_CSV = "images.csv"


def image_name(image_id: int, uri: str) -> tuple[str, str]:
    """(NAME, extension) of an exported image: ``000000042_my_photo``, ``.jpg``."""
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    return f"{int(image_id):09d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)}", (f".{ext}" if ext else "")


def _fmt(values: list[float]) -> str:
    return (" ".join(["%.6g"] * len(values))) % tuple(values)  # one format call per line


@dataclass(frozen=True)
class YoloOptions:
    """Attributes: kind (``pose`` | ``seg``); link (``symlink`` | ``list`` | ``auto``: symlinks when the
    images and DEST are local); polygon_tolerance_px (seg: Douglas-Peucker tolerance, 0 exact)."""

    kind: str = KIND_POSE
    link: str = LINK_AUTO
    polygon_tolerance_px: float = 1.0


@dataclass(frozen=True)
class PoseRows:
    """The YOLO pose line of every person of a shard, computed in one vectorised pass (Arrow and
    numpy calls on a handful of rows per image cost more than the arithmetic).

    Attributes:
        lines: one per instance row; None where the box lies outside the image.
        keypoints_outside: (N,) labeled keypoints outside the image (written as unlabeled ``0 0 0``).
    """

    lines: list[str | None]
    keypoints_outside: np.ndarray

    @staticmethod
    def of(shard: ExportShard, keypoint_thr: float) -> PoseRows:
        inst = shard.instances
        n = inst.num_rows
        if not n:
            return PoseRows([], np.zeros(0, int))
        counts = np.diff(shard.starts)
        width = np.repeat(np.asarray(shard.widths, np.float64), counts)[:, None]
        height = np.repeat(np.asarray(shard.heights, np.float64), counts)[:, None]
        xywh = coco_boxes_xywh(inst)
        x0, x1 = np.clip(xywh[:, :1], 0, width), np.clip(xywh[:, :1] + xywh[:, 2:3], 0, width)
        y0, y1 = np.clip(xywh[:, 1:2], 0, height), np.clip(xywh[:, 1:2] + xywh[:, 3:4], 0, height)
        box = np.concatenate([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width,
                              (y1 - y0) / height], axis=1)
        kp = keypoints_array(inst).astype(np.float64)
        kx, ky = kp[:, :, 0], kp[:, :, 1]
        inside = (kx >= 0) & (kx <= width) & (ky >= 0) & (ky <= height)
        flags = shard.decisions.keypoint_flags
        if flags is None:
            flags = np.where(kp[:, :, 2] >= keypoint_thr, 2, 0)
        labeled = flags > 0
        vis = labeled & inside
        kxy = np.where(vis[:, :, None], np.stack([kx / width, ky / height], axis=2), 0.0)
        kpts = np.concatenate([kxy, np.where(vis, flags, 0.0)[:, :, None]], axis=2).reshape(n, -1)
        values = np.concatenate([box, kpts], axis=1)
        ok = (box[:, 2] > 0) & (box[:, 3] > 0)
        template = "0 " + " ".join(["%.6g"] * values.shape[1])  # one format call per line
        lines = [template % tuple(v) if good else None for v, good in zip(values.tolist(), ok.tolist(), strict=True)]
        return PoseRows(lines, (labeled & ~inside).sum(axis=1))


def seg_lines(shard: ExportShard, rows: np.ndarray, width: int, height: int, tolerance_px: float,
              tally) -> list[str]:
    """YOLO segmentation lines (one bridged polygon each) of the ``rows`` of one image."""
    if not len(rows):
        return []
    inst = shard.instances.take(rows)
    lines = []
    for mask in decode_rle(rles_of(inst), height, width):
        poly = mask_polygon(mask, tolerance_px)
        if poly is None:
            tally.add_format_drop("empty_masks")
            continue
        xy = np.clip(poly / [width, height], 0.0, 1.0)
        lines.append("0 " + _fmt(xy.reshape(-1).tolist()))
    return lines


def _file_writer(dest):
    """``write(rel, data)`` for the many small label files. Locally a plain write (no temp file and
    rename per label: ``export.json``, written last, is what says the export is complete); on S3
    one PUT each."""
    if not dest.is_local:
        return dest.write_bytes
    made: set[str] = set()

    def write(rel: str, data: bytes) -> None:
        path = dest.path(rel)
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        with open(path, "wb") as f:
            f.write(data)

    return write


def _local_path(uri: str) -> str | None:
    return os.path.abspath(uri.removeprefix("file://")) if protocol_of(uri) == "file" else None


def _write_images(shards: Iterable[ExportShard], dest, policy: ExportPolicy, options: YoloOptions, tally,
                  lists: dict[str, Any], csv_rows: Any) -> dict[str, int]:
    """Labels (and symlinks) of every image; one line per image into ``lists[split]`` and ``csv_rows``.
    Returns the label lines written per split."""
    link = options.link
    labels = {"train": 0, "val": 0}
    write = _file_writer(dest)
    for shard in shards:
        pose = PoseRows.of(shard, policy.keypoint_thr) if options.kind == KIND_POSE else None
        exported = [False] * shard.num_images
        dec = shard.decisions.decision
        area = shard.instances.column("mask_area").to_numpy(zero_copy_only=False)
        for i in range(shard.num_images):
            lo, hi = int(shard.starts[i]), int(shard.starts[i + 1])
            w, h, split, uri = shard.widths[i], shard.heights[i], shard.splits[i], shard.uris[i]
            d = dec[lo:hi]
            ignored = d == Decision.IGNORE
            if ignored.any() and area[lo:hi][ignored].sum() > policy.max_ignore_fraction * w * h:
                tally.add_format_drop("images_ignore_area")
                continue
            if ignored.any():
                tally.add_format_drop("ignored_people_omitted", int(ignored.sum()))
            rows = np.arange(lo, hi)[d == Decision.KEEP]
            if options.kind == KIND_POSE:
                lines = [pose.lines[k] for k in rows.tolist() if pose.lines[k] is not None]
                if len(lines) < len(rows):
                    tally.add_format_drop("boxes_outside_image", len(rows) - len(lines))
                outside = int(pose.keypoints_outside[rows].sum())
                if outside:
                    tally.add_format_drop("keypoints_outside_image", outside)
            else:
                lines = seg_lines(shard, rows, w, h, options.polygon_tolerance_px, tally)
            name, ext = image_name(shard.image_ids[i], uri)
            write(f"labels/{split}/{name}.txt", "".join(line + "\n" for line in lines).encode())
            labels[split] += len(lines)
            src = _local_path(uri)
            this_link = link
            if link == LINK_AUTO:
                this_link = LINK_SYMLINK if (dest.is_local and src is not None) else LINK_LIST
            if this_link == LINK_SYMLINK:
                if src is None:
                    raise ValueError(f"--link symlink needs local images; {uri} is not")
                target = dest.path("images", split, name + ext)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.lexists(target):
                    os.remove(target)
                os.symlink(src, target)
                lists[split].write(f"./images/{split}/{name}{ext}\n")
            else:
                lists[split].write(uri + "\n")
            csv_rows.writerow([f"{name}{ext}", split, uri])
            exported[i] = True
        tally.add_shard(shard, exported)
    return labels


def write_yolo_export(shards: Iterable[ExportShard], dest, policy: ExportPolicy, options: YoloOptions,
                      tally) -> list[dict[str, Any]]:
    """Write the YOLO dataset of ``shards`` into ``dest`` (an ``OutputStore``); returns its files' summary.

    Raises:
        ValueError: ``link: symlink`` asked for with DEST or an image not local.
    """
    if options.kind not in (KIND_POSE, KIND_SEG):
        raise ValueError(f"YOLO kind must be pose or seg, got {options.kind!r}")
    link = options.link
    if link == LINK_SYMLINK and not dest.is_local:
        raise ValueError("--link symlink needs a local --to folder")
    with contextlib.ExitStack() as stack:
        # The list files and images.csv are streamed (one line per image: they grow with the output,
        # so they are never held in memory).
        lists = {s: stack.enter_context(dest.open_text_for_write(f"{s}.txt")) for s in ("train", "val")}
        csv_rows = csv.writer(stack.enter_context(dest.open_text_for_write(IMAGES_CSV)), lineterminator="\n")
        csv_rows.writerow(["name", "split", "uri"])
        labels = _write_images(shards, dest, policy, options, tally, lists, csv_rows)
    has_val = tally.images["val"] > 0
    data: dict[str, Any] = {
        "path": dest.uri,
        "train": "train.txt",
        # Ultralytics needs a val set: without a split the train images double as val (said in export.json).
        "val": "val.txt" if has_val else "train.txt",
        "names": {0: "person"},
    }
    if options.kind == KIND_POSE:
        data["kpt_shape"] = [NUM_KEYPOINTS, 3]
        data["flip_idx"] = list(FLIP_INDICES)
    dest.write_bytes(DATA_YAML, yaml.safe_dump(data, sort_keys=False).encode())
    return [{"file": DATA_YAML, "kind": options.kind},
            {"file": "train.txt", "split": "train", "images": tally.images["train"], "labels": labels["train"]},
            {"file": "val.txt", "split": "val", "images": tally.images["val"], "labels": labels["val"]}]
