"""Store and read back the loop's per-pass ``IterationTrace``s (the ``trace`` run option, for GIFs).

One small JSON per image, ``OUT/traces/<image_id>/trace.json``::

    {"version": 2, "height", "width", "passes": [{"iteration", "num_new", "num_removed_old",
     "boxes_xyxy", "scores", "labels", "masks_rle", "blacked_out_rle"}, ...]}

The detector input of a pass is the original image with the people found so far blacked out
(``ops.masks.mask_out`` sets their pixels to 0), so it is stored as the RLE of its all-black
pixels (``blacked_out_rle``) and rebuilt from the original image when read: a few KB per image
instead of a PNG per pass (~0.8 MB for a 0.65 MP photo). ``encode_traces`` checks that the rebuild
is exact and, for a pass where it would not be (a loop that greys or blurs instead), stores that
pass's input as ``pass_<k>_input.png`` instead. Detector masks are COCO RLE like every other mask.
``write_traces`` writes them through the output's store (atomic, local folders and S3 alike).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from bmp_core.ops.rle import decode_rle, encode_rle
from bmp_core.output import layout
from bmp_core.output.store import OutputStore
from bmp_core.records import Detections, IterationTrace


def _input_name(iteration: int) -> str:
    return f"pass_{iteration}_input.png"


def _blacked_out(input_bgr: np.ndarray) -> np.ndarray:
    """(H, W) bool: the all-zero pixels of a detector input."""
    return ~input_bgr.any(axis=2)


def _rebuild(image_bgr: np.ndarray, blacked_out: np.ndarray) -> np.ndarray:
    out = image_bgr.copy()
    out[blacked_out] = 0
    return out


def encode_traces(traces: Sequence[IterationTrace], image_bgr: np.ndarray) -> dict[str, bytes]:
    """The files of one image's trace folder.

    Args:
        traces: the ``BmpResult.traces`` of one image (non-empty).
        image_bgr: (H, W, 3) uint8 the original image the loop ran on.

    Returns:
        file name -> bytes: ``trace.json``, plus a PNG for any pass whose input cannot be rebuilt
        from ``image_bgr`` and its black pixels.
    """
    if not traces:
        raise ValueError("no traces: run the loop with trace=True")
    h, w = image_bgr.shape[:2]
    files: dict[str, bytes] = {}
    passes = []
    for t in traces:
        d = t.detections
        blacked = _blacked_out(t.detector_input_bgr)
        entry: dict[str, Any] = {
            "iteration": int(t.iteration),
            "num_new": int(t.num_new),
            "num_removed_old": int(t.num_removed_old),
            "boxes_xyxy": np.asarray(d.boxes_xyxy, float).round(2).tolist(),
            "scores": np.asarray(d.scores, float).round(4).tolist(),
            "labels": np.asarray(d.labels, int).tolist(),
            "masks_rle": encode_rle(d.masks if d.masks is not None else np.zeros((len(d), h, w), bool)),
            "blacked_out_rle": encode_rle(blacked[None])[0],
        }
        if not np.array_equal(_rebuild(image_bgr, blacked), t.detector_input_bgr):
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(t.detector_input_bgr[:, :, ::-1])).save(buf, format="PNG")
            files[_input_name(t.iteration)] = buf.getvalue()
        passes.append(entry)
    files[layout.TRACE_JSON] = json.dumps({"version": 2, "height": h, "width": w, "passes": passes}).encode()
    return files


def write_traces(store: OutputStore, image_id: int, traces: Sequence[IterationTrace], image_bgr: np.ndarray) -> None:
    """Write ``encode_traces`` files under ``OUT/traces/<image_id>/`` (keyed by image id, so a retried
    shard overwrites rather than duplicates)."""
    for name, data in encode_traces(traces, image_bgr).items():
        store.write_bytes(layout.trace_rel(image_id, name), data)


def _pass_input(store: OutputStore, image_id: int, entry: dict[str, Any], image_bgr: np.ndarray) -> np.ndarray:
    png = store.read_bytes(layout.trace_rel(image_id, _input_name(entry["iteration"])))
    if png is not None:
        with Image.open(io.BytesIO(png)) as im:
            return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
    h, w = image_bgr.shape[:2]
    return _rebuild(image_bgr, decode_rle([entry["blacked_out_rle"]], h, w)[0])


def load_traces(store: OutputStore, image_id: int, image_bgr: np.ndarray) -> list[IterationTrace] | None:
    """Read one image's traces back; None when the output has no ``trace.json`` for it.

    Args:
        store: the output.
        image_id: the image.
        image_bgr: (H, W, 3) uint8 the original image (the detector inputs are rebuilt from it).

    Returns:
        ``IterationTrace``s in pass order, as the loop made them.

    Raises:
        ValueError: the trace was made on an image of another size.
    """
    data = store.read_bytes(layout.trace_rel(image_id))
    if data is None:
        return None
    meta = json.loads(data)
    h, w = int(meta["height"]), int(meta["width"])
    if image_bgr.shape[:2] != (h, w):
        raise ValueError(f"trace of a {w}x{h} image, got a {image_bgr.shape[1]}x{image_bgr.shape[0]} one")
    out = []
    for entry in meta["passes"]:
        n = len(entry["scores"])
        detections = Detections(
            boxes_xyxy=np.asarray(entry["boxes_xyxy"], np.float32).reshape(n, 4),
            scores=np.asarray(entry["scores"], np.float32),
            labels=np.asarray(entry["labels"], np.int64),
            masks=decode_rle(entry["masks_rle"], h, w),
        )
        out.append(IterationTrace(int(entry["iteration"]), _pass_input(store, image_id, entry, image_bgr),
                                  detections, int(entry["num_new"]), int(entry["num_removed_old"])))
    return out
