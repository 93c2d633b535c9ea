"""The lite person detector (BlazePose's own detector, ``bmp_core/models/lite/detector.py``) on real images.

- Our decoding (anchors, sigmoid scores, weighted NMS, letterbox removal) equals MediaPipe's own: the
  wheel's ``PoseDetectionCpu`` graph, run through ``mediapipe.CalculatorGraph``, on the demo images
  and their windows.
- The windows' merge gives one region per person, with a tight box (the person's mask, not the
  detector's loose region).
- The loop's second pass finds a person the first pass missed, once the first one is blacked out.

The job's accuracy without given boxes (``bmp-label run`` + pycocotools) is in ``test_lite_job.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe")

from bmp_core.config import load_config  # noqa: E402
from bmp_core.loop import run_bmp  # noqa: E402
from bmp_core.models import build_models  # noqa: E402
from bmp_core.models.lite.detector import PoseDetectionModel  # noqa: E402
from bmp_core.models.lite.pose_detection import SCORE_THR, window_grid  # noqa: E402
from bmp_core.ports import BmpModels  # noqa: E402
from tests.conftest import read_bgr  # noqa: E402

pytestmark = pytest.mark.lite

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "lite_cpu.yaml"


@pytest.fixture(scope="module")
def coco_dir(testdata: Path) -> Path:
    return testdata / "coco"


@pytest.fixture(scope="module")
def one_pass_models() -> BmpModels:
    """The lite models with the detector on the whole image only (no windows): about one person per image."""
    return build_models(load_config(CONFIG, ["models.lite.detector_windows=[]"]).models)


class MediaPipePoseDetection:
    """The wheel's ``PoseDetectionCpu`` graph: MediaPipe's own preprocessing, inference and decoding."""

    def __init__(self) -> None:
        import mediapipe as mp
        from mediapipe.framework.formats import detection_pb2
        from mediapipe.python import packet_creator, packet_getter
        from mediapipe.python._framework_bindings import resource_util

        # The graph names its model relative to the package root (as mediapipe's solutions set it).
        resource_util.set_resource_dir(str(Path(mp.__file__).parents[1]))
        self._mp, self._create, self._detection = mp, packet_creator, detection_pb2.Detection
        self._graph = mp.CalculatorGraph(graph_config=(
            'input_stream: "image" output_stream: "detections" node { calculator: "PoseDetectionCpu" '
            'input_stream: "IMAGE:image" output_stream: "DETECTIONS:detections" }'))
        self._found: list = []
        self._graph.observe_output_stream(
            "detections", lambda _s, packet: self._found.extend(packet_getter.get_proto_list(packet)))
        self._graph.start_run()
        self._timestamp = 0

    def detect(self, image_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """((N, 4) xyxy pixel boxes, (N, 4, 2) pixel keypoints, (N,) scores)."""
        self._found.clear()
        frame = self._create.create_image_frame(image_format=self._mp.ImageFormat.SRGB,
                                                data=np.ascontiguousarray(image_rgb))
        self._graph.add_packet_to_input_stream("image", frame.at(self._timestamp))
        self._timestamp += 1
        self._graph.wait_until_idle()
        h, w = image_rgb.shape[:2]
        boxes, keypoints, scores = [], [], []
        for found in self._found:
            det = found if hasattr(found, "location_data") else self._detection.FromString(found)
            box = det.location_data.relative_bounding_box
            boxes.append([box.xmin * w, box.ymin * h, (box.xmin + box.width) * w, (box.ymin + box.height) * h])
            keypoints.append([[k.x * w, k.y * h] for k in det.location_data.relative_keypoints])
            scores.append(det.score[0])
        return (np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(keypoints, np.float64).reshape(-1, 4, 2),
                np.asarray(scores, np.float64))

    def close(self) -> None:
        self._graph.close()


def test_decoder_equals_mediapipe_graph(coco_dir: Path) -> None:
    reference, ours = MediaPipePoseDetection(), PoseDetectionModel()
    compared = 0
    try:
        for path in sorted(coco_dir.glob("*.jpg")):
            rgb = np.ascontiguousarray(read_bgr(path)[:, :, ::-1])
            h, w = rgb.shape[:2]
            # The whole image and a few windows (people at other scales, some windows with nobody).
            for x1, y1, x2, y2 in window_grid(w, h, (0.6,), 0.0):
                crop = np.ascontiguousarray(rgb[y1:y2, x1:x2])
                boxes, keypoints, scores = reference.detect(crop)
                mine = ours.detect(crop, SCORE_THR)
                assert len(mine) == len(scores), (path.name, (x1, y1, x2, y2))
                order = np.argsort(-mine.scores, kind="stable")  # both come best first; ties are not expected
                np.testing.assert_allclose(mine.scores[order], scores, atol=1e-3)
                np.testing.assert_allclose(mine.boxes_xyxy[order], boxes, atol=1.0)
                np.testing.assert_allclose(mine.keypoints_xy[order], keypoints, atol=1.0)
                compared += len(scores)
    finally:
        reference.close()
        ours.close()
    assert compared >= 8  # people were found and compared, not only empty windows


def _iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def test_windows_give_one_tight_box_per_person(coco_dir: Path) -> None:
    models = build_models(load_config(CONFIG).models)
    gt = json.loads((coco_dir / "test_coco.json").read_text())
    found_people = matched = 0
    for image in gt["images"]:
        boxes = np.array([a["bbox"] for a in gt["annotations"] if a["image_id"] == image["id"]], np.float64)
        boxes[:, 2:] += boxes[:, :2]
        (dets,) = models.detector.detect([read_bgr(coco_dir / image["file_name"])])
        assert (dets.labels == 0).all() and dets.masks.shape[0] == len(dets)
        iou = _iou_xyxy(dets.boxes_xyxy.astype(np.float64), boxes)
        # Never two regions for one person: at most one detection overlaps a ground-truth person by IoU > 0.5.
        assert ((iou > 0.5).sum(axis=0) <= 1).all(), (image["file_name"], np.round(iou, 2))
        found_people += int((iou.max(axis=0, initial=0) > 0.5).sum())
        # The box is the mask's: tight around the person (the detector's own region is ~1.5-4x bigger).
        best = iou.max(axis=1, initial=0)
        matched += int((best > 0.8).sum())
    # Measured: 10 of the 14 people at IoU > 0.5 (two of the others are a few pixels tall), 8 at IoU > 0.8.
    assert found_people >= 9
    assert matched >= 7


def test_second_pass_finds_the_person_the_first_missed(coco_dir: Path, one_pass_models: BmpModels) -> None:
    # Two people side by side: the whole-image detector (trained to find the main person) finds one.
    person = read_bgr(coco_dir / "000000000785.jpg")
    image = np.ascontiguousarray(np.concatenate([person, person[:, ::-1]], axis=1))
    width = person.shape[1]
    (first,) = one_pass_models.detector.detect([image])
    assert len(first) == 1
    cfg = load_config(CONFIG, ["models.lite.detector_windows=[]"]).loop
    result = run_bmp(image, one_pass_models, cfg)
    inst = result.instances
    assert inst.iteration.tolist() == [0, 1]  # the second pass found the other one
    centres_x = (inst.mask_boxes_xyxy[:, 0] + inst.mask_boxes_xyxy[:, 2]) / 2
    assert sorted(centres_x > width) == [False, True]  # one person in each half
    # And it was the masking that did it: the same detector on the same image finds only the first again.
    (again,) = one_pass_models.detector.detect([image])
    np.testing.assert_array_equal(again.boxes_xyxy, first.boxes_xyxy)
