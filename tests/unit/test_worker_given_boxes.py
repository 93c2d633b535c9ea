"""job.given_boxes: the worker reads the file once, pass 0 uses its boxes and scores, config checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bmp_core.config import ConfigError, check_job_config, config_from_dict, load_config
from bmp_core.loop import run_bmp
from bmp_core.output.tables import keypoints_array
from bmp_core.testing import build_fake_models
from bmp_core.testing.images import encode_image, synthetic_people_bgr
from jobs.planner import RESULT_JOB_KEYS, config_digest
from jobs.worker import BmpWorker, ShardTask
from tests.conftest import read_bgr

REPO = Path(__file__).resolve().parents[2]
# Two people in a 640x425 image, apart so pose-NMS keeps both; COCO xywh.
DETECTIONS = [
    {"image_id": 1, "category_id": 1, "bbox": [40.0, 30.0, 150.0, 300.0], "score": 0.9},
    {"image_id": 1, "category_id": 1, "bbox": [400.0, 60.0, 120.0, 280.0], "score": 0.6},
    {"image_id": 1, "category_id": 1, "bbox": [300.0, 10.0, 50.0, 50.0], "score": 0.05},  # under the thr
]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """known.jpg (named by the boxes file) and unknown.jpg (not named), plus the boxes files."""
    images = tmp_path / "images"
    images.mkdir()
    # Synthetic photos (runs without ../shared/testdata); known.jpg has the size DETECTIONS assume.
    (images / "known.jpg").write_bytes(encode_image(synthetic_people_bgr(425, 640, 3, 0), "known.jpg"))
    (images / "unknown.jpg").write_bytes(encode_image(synthetic_people_bgr(480, 640, 2, 1), "unknown.jpg"))
    (tmp_path / "dets.json").write_text(json.dumps(DETECTIONS))
    (tmp_path / "names.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "known.jpg"}]}))
    return tmp_path


def _cfg(folder: Path, *overrides: str, kind: str = "fake") -> object:
    return config_from_dict(
        {"models": {"kind": kind, "device": "cpu"}, "loop": {"iterations": 1}},
        [f"job.given_boxes={folder / 'dets.json'}", f"job.given_boxes_images={folder / 'names.json'}",
         "job.given_boxes_score_thr=0.1", "job.batch_size=2", *overrides],
    )


def _rows_of(instances: pa.Table, image_id: int) -> pa.Table:
    return instances.filter(pc.equal(instances.column("image_id"), image_id))


def test_pass0_uses_the_files_boxes_and_scores_and_unknown_images_are_detected(folder: Path) -> None:
    cfg = _cfg(folder)
    uris = [str(folder / "images" / "known.jpg"), str(folder / "images" / "unknown.jpg")]
    rows, instances = BmpWorker(cfg).label([0, 1], uris)  # one batch: a given image and a detected one
    assert [r.error for r in rows] == [None, None]

    known = _rows_of(instances, 0)
    boxes_xyxy = np.float32([[40, 30, 190, 330], [400, 60, 520, 340]])  # the file's, over the score thr
    np.testing.assert_array_equal(np.asarray(known.column("bbox_xyxy").to_pylist(), np.float32), boxes_xyxy)
    np.testing.assert_array_equal(known.column("det_score").to_numpy(), np.float32([0.9, 0.6]))
    assert set(known.column("iteration").to_pylist()) == {0}
    # ... and the rest is what the loop makes of those boxes and scores, run here independently.
    fakes = build_fake_models(cfg.models.fake)
    expected = run_bmp(read_bgr(Path(uris[0])), fakes, cfg.loop, boxes_xyxy=boxes_xyxy,
                       box_scores=np.float32([0.9, 0.6])).instances
    np.testing.assert_array_equal(keypoints_array(known), expected.keypoints)

    # The file does not name unknown.jpg: it goes to the (fake) detector, as without a boxes file.
    detected = run_bmp(read_bgr(Path(uris[1])), fakes, cfg.loop).instances
    unknown = _rows_of(instances, 1)
    assert unknown.num_rows == len(detected) > 0
    np.testing.assert_array_equal(unknown.column("det_score").to_numpy(), detected.det_scores)
    np.testing.assert_array_equal(keypoints_array(unknown), detected.keypoints)


def test_one_image_at_a_time_retry_keeps_the_given_boxes(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jobs.worker
    from bmp_core.io.images import ImageInputError

    def failing_batch(*args: object, **kwargs: object) -> None:
        raise ImageInputError("one image's own problem")

    monkeypatch.setattr(jobs.worker, "run_bmp_batch", failing_batch)
    rows, instances = BmpWorker(_cfg(folder)).label([0], [str(folder / "images" / "known.jpg")])
    assert rows[0].error is None and rows[0].num_instances == 2
    np.testing.assert_array_equal(instances.column("det_score").to_numpy(), np.float32([0.9, 0.6]))


def test_lite_without_boxes_for_an_image_is_an_error_row(folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    import bmp_core.models

    # The lite backend needs MediaPipe; what matters here is the worker's handling of models without
    # a person detector (what build_lite_models returns with models.lite.detect_people: false).
    monkeypatch.setattr(bmp_core.models, "build_models",
                        lambda cfg: dataclasses.replace(build_fake_models(), detector=None))
    cfg = _cfg(folder, "models.lite.detect_people=false", kind="lite")
    uris = (str(folder / "images" / "known.jpg"), str(folder / "images" / "unknown.jpg"))
    report = BmpWorker(cfg).process_shard(ShardTask(str(tmp_path / "out"), "plan1", 0, 0, uris))
    assert report.num_images == 2 and report.num_errors == 1 and report.num_instances == 2
    rows, _ = BmpWorker(cfg).label([0, 1], list(uris))
    assert rows[0].error is None
    assert rows[1].error.startswith("no given boxes for this image")
    assert str(folder / "dets.json") in rows[1].error


@pytest.mark.parametrize("bbox, reason", [([float("nan"), 30.0, 150.0, 300.0], "not a finite xyxy box"),
                                          ([40.0, 30.0, -150.0, 300.0], "x2 >= x1")])
def test_a_bad_given_box_is_that_images_error_row(folder: Path, bbox: list[float], reason: str) -> None:
    """A given-box problem is the image's own (an error row); the other image of the batch is labeled."""
    (folder / "dets.json").write_text(json.dumps([{**DETECTIONS[0], "bbox": bbox}]))  # json writes NaN as NaN
    uris = [str(folder / "images" / "known.jpg"), str(folder / "images" / "unknown.jpg")]
    rows, instances = BmpWorker(_cfg(folder)).label([0, 1], uris)
    assert reason in (rows[0].error or "") and "given box 0" in rows[0].error
    assert rows[1].error is None and rows[1].num_instances > 0
    assert set(instances.column("image_id").to_pylist()) == {1}


def test_bad_boxes_file_fails_the_worker_at_start(tmp_path: Path) -> None:
    from bmp_core.io.given_boxes import GivenBoxesError

    (tmp_path / "dets.json").write_text(json.dumps(DETECTIONS))  # a results list without its names file
    cfg = config_from_dict({"models": {"kind": "fake"}}, [f"job.given_boxes={tmp_path / 'dets.json'}"])
    with pytest.raises(GivenBoxesError, match="images_json_path"):
        BmpWorker(cfg)


def test_lite_without_its_detector_needs_given_boxes_and_one_iteration() -> None:
    lite = REPO / "configs" / "lite_cpu.yaml"
    check_job_config(load_config(lite))  # BlazePose's own detector finds the people: no boxes needed
    no_detector = ["models.lite.detect_people=false", "loop.iterations=1"]
    cfg = load_config(lite, no_detector)  # loads: run_bmp callers pass their boxes themselves
    assert cfg.job.given_boxes is None and not cfg.models.has_detector
    with pytest.raises(ConfigError, match=r"models.kind: lite with models.lite.detect_people: false needs "
                                          r"job.given_boxes"):
        check_job_config(cfg)
    check_job_config(load_config(lite, [*no_detector, "job.given_boxes=dets.json"]))
    with pytest.raises(ConfigError, match=r"loop.iterations: 1 \(got 2\)"):
        load_config(lite, ["models.lite.detect_people=false", "job.given_boxes=dets.json", "loop.iterations=2"])
    with pytest.raises(ConfigError, match="job.given_boxes_images is set but job.given_boxes is not"):
        config_from_dict({}, ["job.given_boxes_images=gt.json"])
    with pytest.raises(ConfigError, match="job.given_boxes_score_thr: expected a number"):
        config_from_dict({}, ["job.given_boxes=d.json", "job.given_boxes_score_thr=high"])
    with pytest.raises(ConfigError, match="job.given_boxes: an empty path"):
        config_from_dict({}, ["job.given_boxes=''"])
    check_job_config(config_from_dict({"models": {"kind": "fake"}}))  # other kinds have a detector


def test_given_boxes_keys_are_in_the_plan_fingerprint() -> None:
    assert {"given_boxes", "given_boxes_images", "given_boxes_score_thr"} <= set(RESULT_JOB_KEYS)
    base = config_from_dict({}, ["job.given_boxes=a.json"])
    for override in ("job.given_boxes=b.json", "job.given_boxes_images=gt.json", "job.given_boxes_score_thr=0.3"):
        assert config_digest(config_from_dict({}, ["job.given_boxes=a.json", override])) != config_digest(base)


def test_every_entry_point_makes_local_given_boxes_paths_absolute(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    from bmp_core.io.given_boxes import with_absolute_paths
    from jobs.ray_data import BmpPredictor

    monkeypatch.chdir(tmp_path)
    cfg = with_absolute_paths(config_from_dict({}, ["job.given_boxes=dets.json",
                                                    "job.given_boxes_images=s3://b/gt.json"]))
    assert cfg.job.given_boxes == str(tmp_path / "dets.json")  # workers need not share the driver's cwd
    assert cfg.job.given_boxes_images == "s3://b/gt.json"
    # the CLI (_load) and the Ray Data UDF resolve them the same way (run_job: tests/integration)
    (tmp_path / "dets.json").write_text((REPO / "examples" / "detections.json").read_text())
    (tmp_path / "gt.json").write_text((REPO / "examples" / "ground_truth.json").read_text())
    predictor = BmpPredictor(config_from_dict({}, ["models.kind=fake", "job.given_boxes=dets.json",
                                                   "job.given_boxes_images=gt.json"]))
    assert predictor.cfg.job.given_boxes == str(tmp_path / "dets.json")
    assert predictor.cfg.job.given_boxes_images == str(tmp_path / "gt.json")
