"""Store and read back the loop's per-pass ``IterationTrace``s (the ``trace`` run option, for GIFs).

One folder per image, ``OUT/traces/<image_id>/``::

    trace.json          {"version": 1, "height", "width", "passes": [{"iteration", "num_new",
                         "num_removed_old", "boxes_xyxy", "scores", "labels", "masks_rle"}, ...]}
    pass_0_input.png    the detector input of pass 0 (the original image), RGB PNG
    pass_1_input.png    the masked-out image pass 1 detected on, ...

PNG because the masked-out inputs are mostly black, which PNG compresses well and JPEG would
smear into the people's edges. Detector masks are stored as COCO RLE like every other mask.
The job writes these with ``encode_traces`` (bytes per file name), so it can use its own
atomic writer for local folders and S3 alike.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from bmp_core.io.uris import filesystem, join_uri
from bmp_core.ops.rle import decode_rle, encode_rle
from bmp_core.records import Detections, IterationTrace

TRACE_JSON = "trace.json"
TRACES_DIR = "traces"


def _input_name(iteration: int) -> str:
    return f"pass_{iteration}_input.png"


def encode_traces(traces: Sequence[IterationTrace]) -> dict[str, bytes]:
    """The files of one image's trace folder.

    Args:
        traces: the ``BmpResult.traces`` of one image (non-empty).

    Returns:
        file name -> bytes (``trace.json`` and one PNG per pass).
    """
    if not traces:
        raise ValueError("no traces: run the loop with trace=True")
    h, w = traces[0].detector_input_bgr.shape[:2]
    files: dict[str, bytes] = {}
    passes = []
    for t in traces:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(t.detector_input_bgr[:, :, ::-1])).save(buf, format="PNG")
        files[_input_name(t.iteration)] = buf.getvalue()
        d = t.detections
        masks = d.masks if d.masks is not None else np.zeros((len(d), h, w), bool)
        passes.append(
            {
                "iteration": int(t.iteration),
                "num_new": int(t.num_new),
                "num_removed_old": int(t.num_removed_old),
                "boxes_xyxy": np.asarray(d.boxes_xyxy, float).round(2).tolist(),
                "scores": np.asarray(d.scores, float).round(4).tolist(),
                "labels": np.asarray(d.labels, int).tolist(),
                "masks_rle": encode_rle(masks),
            }
        )
    files[TRACE_JSON] = json.dumps({"version": 1, "height": h, "width": w, "passes": passes}).encode()
    return files


def write_traces(trace_dir_uri: str, traces: Sequence[IterationTrace]) -> None:
    """Write ``encode_traces`` files under ``trace_dir_uri`` (local folder or s3 prefix)."""
    fs, root = filesystem(trace_dir_uri)
    fs.makedirs(root, exist_ok=True)
    for name, data in encode_traces(traces).items():
        fs.pipe_file(f"{root.rstrip('/')}/{name}", data)


def _pass_trace(entry: dict[str, Any], input_bgr: np.ndarray, h: int, w: int) -> IterationTrace:
    n = len(entry["scores"])
    detections = Detections(
        boxes_xyxy=np.asarray(entry["boxes_xyxy"], np.float32).reshape(n, 4),
        scores=np.asarray(entry["scores"], np.float32),
        labels=np.asarray(entry["labels"], np.int64),
        masks=decode_rle(entry["masks_rle"], h, w),
    )
    return IterationTrace(
        int(entry["iteration"]), input_bgr, detections, int(entry["num_new"]), int(entry["num_removed_old"])
    )


def load_traces(trace_dir_uri: str) -> list[IterationTrace] | None:
    """Read one image's traces back; None when the folder has no ``trace.json``.

    Returns:
        ``IterationTrace``s in pass order; ``detector_input_bgr`` is (H, W, 3) uint8 BGR.
    """
    fs, root = filesystem(trace_dir_uri)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/{TRACE_JSON}"):
        return None
    meta = json.loads(fs.cat_file(f"{root}/{TRACE_JSON}"))
    h, w = int(meta["height"]), int(meta["width"])
    out = []
    for entry in meta["passes"]:
        with Image.open(io.BytesIO(fs.cat_file(f"{root}/{_input_name(entry['iteration'])}"))) as im:
            input_bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
        out.append(_pass_trace(entry, input_bgr, h, w))
    return out


def trace_dir(output_uri: str, image_id: int) -> str:
    """``OUT/traces/<image_id>``."""
    return join_uri(output_uri, TRACES_DIR, str(int(image_id)))
