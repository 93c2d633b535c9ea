"""The lite person detector (``Detector`` port): BlazePose's own detector over the image and windows.

Per image (docs/lite.md, "The lite detector"):
  1. run ``pose_detection.tflite`` on the whole image and on overlapping square windows
     (``models.lite.detector_windows``, ``detector_overlap``), each decoded as MediaPipe does
     (``pose_detection.py``),
  2. merge what several windows found of one person (``merge_people``),
  3. pose each person's region with BlazePose (the estimator's ``pose_box``): a region where it finds
     nobody is dropped, and the person's box is the tight box of BlazePose's mask (of its landmarks
     where the mask is empty), never the detector's loose region. The mask goes with the detection, so
     the loop conditions the pose on it as it does with RTMDet's masks.

The model runs through MediaPipe's own ``CalculatorGraph`` (``ImageToTensorCalculator`` +
``InferenceCalculator``, the nodes of the wheel's ``PoseDetectionCpu`` graph), which hands back the
raw tensors: no second TFLite runtime is needed, and the input is letterboxed and scaled exactly as
MediaPipe's graph does it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bmp_core.config import LiteModelsConfig
from bmp_core.models.lite.crops import paste_crop_mask, pasted_window
from bmp_core.models.lite.pose_detection import (
    NMS_IOU_THR,
    NUM_ANCHORS,
    PoseDetections,
    decode,
    letterbox_to_pixels,
    merge_people,
    person_regions_xyxy,
    weighted_nms,
    window_grid,
)
from bmp_core.records import Detections

if TYPE_CHECKING:
    from bmp_core.models.lite.blazepose import BlazePoseEstimator

_GRAPH = """
input_stream: "image"
output_stream: "raw_boxes"
output_stream: "raw_scores"
node {{
  calculator: "ImageToTensorCalculator"
  input_stream: "IMAGE:image"
  output_stream: "TENSORS:input_tensors"
  options: {{ [mediapipe.ImageToTensorCalculatorOptions.ext] {{
    output_tensor_width: 224 output_tensor_height: 224 keep_aspect_ratio: true
    output_tensor_float_range {{ min: -1.0 max: 1.0 }} border_mode: BORDER_ZERO }} }}
}}
node {{
  calculator: "InferenceCalculator"
  input_stream: "TENSORS:input_tensors"
  output_stream: "TENSORS:output_tensors"
  options: {{ [mediapipe.InferenceCalculatorOptions.ext] {{ model_path: "{model}" delegate {{ xnnpack {{}} }} }} }}
}}
node {{
  calculator: "SplitTensorVectorCalculator"
  input_stream: "output_tensors"
  output_stream: "boxes_tensor"
  output_stream: "scores_tensor"
  options: {{ [mediapipe.SplitVectorCalculatorOptions.ext] {{
    ranges: {{ begin: 0 end: 1 }} ranges: {{ begin: 1 end: 2 }} }} }}
}}
node {{ calculator: "TensorsToFloatsCalculator"
  input_stream: "TENSORS:boxes_tensor" output_stream: "FLOATS:raw_boxes" }}
node {{ calculator: "TensorsToFloatsCalculator"
  input_stream: "TENSORS:scores_tensor" output_stream: "FLOATS:raw_scores" }}
"""


def pose_detection_model_path() -> Path:
    """``pose_detection.tflite`` inside the installed mediapipe wheel."""
    import mediapipe

    return Path(mediapipe.__file__).parent / "modules" / "pose_detection" / "pose_detection.tflite"


class PoseDetectionModel:
    """``pose_detection.tflite`` in a MediaPipe graph that returns its raw outputs. Thread-safe (one
    image at a time)."""

    def __init__(self) -> None:
        import mediapipe as mp

        # Registers the options' protobuf extensions the graph text names.
        from mediapipe.calculators.core import split_vector_calculator_pb2  # noqa: F401
        from mediapipe.calculators.tensor import (
            image_to_tensor_calculator_pb2,  # noqa: F401
            inference_calculator_pb2,  # noqa: F401
        )
        from mediapipe.python import packet_creator, packet_getter

        self._mp, self._create, self._get = mp, packet_creator, packet_getter
        self._graph = mp.CalculatorGraph(graph_config=_GRAPH.format(model=pose_detection_model_path()))
        self._out: dict[str, list[float]] = {}
        for name in ("raw_boxes", "raw_scores"):
            self._graph.observe_output_stream(name, self._observer(name))
        self._graph.start_run()
        self._timestamp = 0
        self._lock = threading.Lock()

    def _observer(self, name: str):
        def observe(_stream: str, packet) -> None:
            self._out[name] = self._get.get_float_list(packet)
        return observe

    def raw(self, image_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model on one (h, w, 3) uint8 RGB image -> ((2254, 12) regressors, (2254,) logits)."""
        frame = self._create.create_image_frame(image_format=self._mp.ImageFormat.SRGB,
                                                data=np.ascontiguousarray(image_rgb))
        with self._lock:
            self._out.clear()
            self._graph.add_packet_to_input_stream("image", frame.at(self._timestamp))
            self._timestamp += 1
            self._graph.wait_until_idle()
            boxes, scores = self._out["raw_boxes"], self._out["raw_scores"]
        return (np.asarray(boxes, np.float32).reshape(NUM_ANCHORS, -1),
                np.asarray(scores, np.float32).reshape(NUM_ANCHORS))

    def detect(self, image_rgb: np.ndarray, score_thr: float) -> PoseDetections:
        """Detections on one image in its pixels, decoded and suppressed as MediaPipe's graph does."""
        h, w = image_rgb.shape[:2]
        dets = weighted_nms(decode(*self.raw(image_rgb), score_thr), NMS_IOU_THR)
        return letterbox_to_pixels(dets, w, h)

    def close(self) -> None:
        self._graph.close()


def detect_windows(model: PoseDetectionModel, image_rgb: np.ndarray, cfg: LiteModelsConfig) -> PoseDetections:
    """The people of one image: the model on the whole image and every window, merged."""
    h, w = image_rgb.shape[:2]
    parts = []
    for x1, y1, x2, y2 in window_grid(w, h, cfg.detector_windows, cfg.detector_overlap):
        found = model.detect(image_rgb[y1:y2, x1:x2], cfg.detector_score_thr)
        parts.append(found.scaled(1.0, (float(x1), float(y1))))
    return merge_people(PoseDetections.concatenate(parts), cfg.detector_merge_dist)


class BlazePersonDetector:
    """``Detector`` port: BlazePose's detector over windows, each person's region posed by BlazePose for
    its mask and tight box (module docstring). ``estimator``: the ``BlazePoseEstimator`` whose
    ``pose_box`` poses a region (its landmark graph is shared, not duplicated)."""

    def __init__(self, cfg: LiteModelsConfig, estimator: BlazePoseEstimator,
                 model: PoseDetectionModel | None = None) -> None:
        self.cfg = cfg
        self.estimator = estimator
        self.model = model if model is not None else PoseDetectionModel()

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """See ``bmp_core.ports.Detector.detect``: label 0 (person), the detector's score, the person's
        BlazePose mask and its tight box."""
        return [self.detect_one(image) for image in images_bgr]

    def detect_one(self, image_bgr: np.ndarray) -> Detections:
        h, w = image_bgr.shape[:2]
        found = detect_windows(self.model, np.ascontiguousarray(image_bgr[:, :, ::-1]), self.cfg)
        people = []
        for region, score in zip(person_regions_xyxy(found), found.scores, strict=True):
            person = self.estimator.pose_box(image_bgr, region, None)
            if person.mask_crop is None:  # BlazePose finds nobody in the region: a false detection
                continue
            mask = paste_crop_mask(person.mask_crop, person.crop_xyxy, (h, w))
            window = pasted_window(person.crop_xyxy, (h, w))
            box = _tight_box_xyxy(mask, window)
            if box is None:  # no mask pixel: the landmarks' box, clipped to the image
                box = _landmarks_box_xyxy(person.keypoints, w, h)
            people.append(_Person(box, float(score), mask, window))
        people = _drop_contained(people, self.cfg.detector_duplicate_overlap)
        if not people:
            return Detections.empty(h, w)
        return Detections(np.asarray([p.box_xyxy for p in people], np.float32),
                          np.asarray([p.score for p in people], np.float32), np.zeros(len(people), np.int64),
                          np.stack([p.mask for p in people]), np.asarray([p.window_xyxy for p in people], np.int64))

    def close(self) -> None:
        self.model.close()


@dataclass
class _Person:
    """One region posed by BlazePose (private): tight box, detector score, mask and its window."""

    box_xyxy: np.ndarray
    score: float
    mask: np.ndarray
    window_xyxy: np.ndarray


def _drop_contained(people: list[_Person], max_inside: float) -> list[_Person]:
    """Largest mask first, drop a person whose mask lies more than ``max_inside`` inside a kept one's;
    the kept one takes the best score of those it absorbed.

    Windows that see only part of a person (an upper body) are not merged by ``merge_people`` (their
    hip points differ), but BlazePose, posing their regions, finds the same person again: the same
    mask, or a part of it (inside it by 0.97-0.99 on the demo and OCHuman images, where two people's
    masks overlapped by at most 0.86 of the smaller one).
    """
    areas = [int(p.mask.sum()) for p in people]
    kept: list[_Person] = []
    for i in np.argsort(-np.asarray(areas, np.int64), kind="stable"):
        person = people[i]
        x1, y1, x2, y2 = (int(v) for v in person.window_xyxy)
        part = person.mask[y1:y2, x1:x2]
        for other in kept:
            if (part & other.mask[y1:y2, x1:x2]).sum() > max_inside * max(areas[i], 1):
                other.score = max(other.score, person.score)
                break
        else:
            kept.append(person)
    return kept


def _tight_box_xyxy(mask: np.ndarray, window_xyxy: np.ndarray) -> np.ndarray | None:
    """(4,) float32 tight pixel box (x2/y2 exclusive, as ``mask_boxes_xyxy``) of the mask pixels, which
    all lie inside ``window_xyxy``; None for an empty mask."""
    x1, y1, x2, y2 = (int(v) for v in window_xyxy)
    part = mask[y1:y2, x1:x2]
    cols, rows = np.flatnonzero(part.any(axis=0)), np.flatnonzero(part.any(axis=1))
    if not len(cols):
        return None
    return np.array([x1 + cols[0], y1 + rows[0], x1 + cols[-1] + 1, y1 + rows[-1] + 1], np.float32)


def _landmarks_box_xyxy(keypoints: np.ndarray, width: int, height: int) -> np.ndarray:
    xs = np.clip(keypoints[:, 0], 0, width)
    ys = np.clip(keypoints[:, 1], 0, height)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
