"""bmp_core.analysis.evaluation against pycocotools run directly on the same predictions."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bmp_core.analysis.evaluation import (
    EvaluationError,
    choose_backend,
    evaluate_output,
    format_table,
    match_images,
)
from bmp_core.output.reader import JobOutput, load_output
from bmp_core.output.tables import IMAGES_SCHEMA, INSTANCES_SCHEMA


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _ann_rle(gt: dict[str, Any], ann: dict[str, Any]) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    image = next(i for i in gt["images"] if i["id"] == ann["image_id"])
    h, w = image["height"], image["width"]
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = {"size": seg["size"], "counts": seg["counts"].encode()}
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def gt_keypoints_as_predictions(ann: dict[str, Any]) -> np.ndarray:
    """(17, 3): the GT keypoints with score 1; unlabeled ones at the box centre.

    COCOeval compares a prediction with a GT person that has no labeled keypoint by its distance to
    the GT box; at the box centre the prediction matches that (ignored) person instead of counting
    as a false positive, as a perfect prediction should.
    """
    kpts = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
    x, y, w, h = ann["bbox"]
    out = np.ones((17, 3))
    out[:, :2] = np.where(kpts[:, 2:3] > 0, kpts[:, :2], [x + w / 2, y + h / 2])
    return out


def gt_as_output(
    gt: dict[str, Any],
    keypoints_of: Any = gt_keypoints_as_predictions,
    iteration_of: Any = lambda k: 0,
    skip_file_names: tuple[str, ...] = (),
    extra_uris: tuple[str, ...] = (),
) -> JobOutput:
    """A JobOutput whose instances are the GT annotations (uris '/data/<file_name>')."""
    from pycocotools import mask as mask_utils

    images = [i for i in gt["images"] if i["file_name"] not in skip_file_names]
    image_rows = [(k, f"/data/{i['file_name']}", i["width"], i["height"]) for k, i in enumerate(images)]
    image_rows += [(len(images) + j, uri, 64, 48) for j, uri in enumerate(extra_uris)]
    out_id = {i["id"]: k for k, i in enumerate(images)}
    images_tbl = pa.Table.from_pydict(
        {
            "image_id": [r[0] for r in image_rows], "uri": [r[1] for r in image_rows],
            "status": ["ok"] * len(image_rows), "error": [None] * len(image_rows),
            "width": [r[2] for r in image_rows], "height": [r[3] for r in image_rows],
            "num_instances": [0] * len(image_rows), "read_s": [None] * len(image_rows),
            "decode_s": [None] * len(image_rows), "label_s": [None] * len(image_rows),
            "shard_id": [0] * len(image_rows),
            "container_uri": [None] * len(image_rows), "key": [None] * len(image_rows),
        },
        schema=IMAGES_SCHEMA,
    )
    cols: dict[str, list[Any]] = {name: [] for name in INSTANCES_SCHEMA.names}
    anns = [a for a in gt["annotations"] if a["image_id"] in out_id]
    for k, ann in enumerate(anns):
        rle = _ann_rle(gt, ann)
        x, y, w, h = ann["bbox"]
        mx, my, mw, mh = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})
        cols["image_id"].append(out_id[ann["image_id"]])
        cols["instance_id"].append(k)
        cols["bbox_xyxy"].append([x, y, x + w, y + h])
        cols["det_score"].append(1.0)
        cols["pose_score"].append(1.0)
        cols["sam_score"].append(1.0)
        cols["keypoints"].append(keypoints_of(ann).tolist())
        cols["mask_rle_counts"].append(rle["counts"])
        cols["mask_rle_size"].append(rle["size"])
        cols["mask_area"].append(int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})))
        cols["mask_bbox_xyxy"].append([mx, my, mx + mw, my + mh])
        cols["det_mask_iou"].append(1.0)
        cols["iteration"].append(iteration_of(k))
        cols["prompted"].append(True)
        cols["keypoint_presence"].append(None)
        cols["keypoint_visibility"].append(None)
    instances = pa.Table.from_pydict(cols, schema=INSTANCES_SCHEMA)
    return JobOutput("/out", images_tbl, instances, None, None)


def pycocotools_stats(gt_path: Path, results: list[dict[str, Any]], iou_type: str) -> np.ndarray:
    """COCOeval stats the plain way: COCO(file), loadRes, evaluate, accumulate, summarize."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.fixture(scope="module")
def coco_gt_path(testdata: Path) -> Path:
    return testdata / "coco" / "test_coco.json"


def test_ground_truth_as_predictions_scores_ap_one(coco_gt_path: Path) -> None:
    gt = _load(coco_gt_path)
    result = evaluate_output(gt_as_output(gt), gt)
    assert result.backend["keypoints"] == "pycocotools"
    assert result.images.matched == 4 and result.images.num_missing_in_gt == 0
    assert result.overall.num_predictions == len(gt["annotations"]) == 14
    for iou_type in ("keypoints", "segm", "bbox"):
        assert result.overall.stats[iou_type]["AP"] == pytest.approx(1.0), iou_type
        assert result.overall.stats[iou_type]["AP50"] == pytest.approx(1.0), iou_type


def test_jittered_keypoints_score_lower_exactly_as_pycocotools(coco_gt_path: Path) -> None:
    gt = _load(coco_gt_path)
    rng = np.random.default_rng(7)
    jitter = {a["id"]: rng.normal(0.0, 6.0, size=(17, 2)) for a in gt["annotations"]}

    def jittered(ann: dict[str, Any]) -> np.ndarray:
        kpts = gt_keypoints_as_predictions(ann)
        kpts[:, :2] += jitter[ann["id"]]
        return kpts

    result = evaluate_output(gt_as_output(gt, keypoints_of=jittered), gt, iou_types=("keypoints",))
    # The same predictions, built straight from the GT file and scored by pycocotools alone.
    direct = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": jittered(a).reshape(-1).tolist(), "score": 1.0}
        for a in gt["annotations"]
    ]
    expected = pycocotools_stats(coco_gt_path, direct, "keypoints")
    ours = result.overall.stats["keypoints"]
    assert ours["AP"] == pytest.approx(expected[0], abs=1e-12)
    assert ours["AP50"] == pytest.approx(expected[1], abs=1e-12)
    assert ours["AR"] == pytest.approx(expected[5], abs=1e-12)
    assert 0.2 < ours["AP"] < 0.95  # 6-pixel noise costs AP, but is far from random


def test_missing_images_are_reported_not_fatal(coco_gt_path: Path) -> None:
    gt = _load(coco_gt_path)
    output = gt_as_output(
        gt, skip_file_names=("000000000785.jpg",), extra_uris=("/data/elsewhere/not_in_gt.jpg",)
    )
    result = evaluate_output(output, gt)
    images = result.images
    assert images.matched == 3
    assert images.missing_in_output == ["000000000785.jpg"]
    assert images.missing_in_gt == ["/data/elsewhere/not_in_gt.jpg"]
    # Scored on the 3 matched images only, where the predictions are perfect.
    assert result.overall.stats["keypoints"]["AP"] == pytest.approx(1.0)
    table = format_table(result)
    assert "1 of the output not in the GT" in table and "1 of the GT not in the output" in table


def test_no_matching_image_gives_empty_scores(coco_gt_path: Path) -> None:
    gt = _load(coco_gt_path)
    output = gt_as_output(gt, skip_file_names=tuple(i["file_name"] for i in gt["images"]), extra_uris=("/x/a.jpg",))
    result = evaluate_output(output, gt)
    assert result.images.matched == 0
    assert result.overall.stats["keypoints"] is None and result.overall.num_predictions == 0
    assert "-" in format_table(result)


def test_matched_images_without_predictions_score_zero(coco_gt_path: Path) -> None:
    gt = _load(coco_gt_path)
    output = gt_as_output(gt)
    output = JobOutput(output.uri, output.images, output.instances.slice(0, 0), None, None)
    result = evaluate_output(output, gt)
    assert result.images.matched == 4
    for iou_type, recall in (("keypoints", "AR"), ("segm", "AR100"), ("bbox", "AR100")):
        assert result.overall.stats[iou_type]["AP"] == 0.0
        assert result.overall.stats[iou_type][recall] == 0.0


def test_per_iteration_prefixes(coco_gt_path: Path) -> None:
    gt = _load(coco_gt_path)
    # Every third person "found in pass 2": after pass 1 recall is lower, after pass 2 it is complete.
    result = evaluate_output(gt_as_output(gt, iteration_of=lambda k: 1 if k % 3 == 2 else 0), gt)
    first, second = result.per_iteration
    assert first.num_predictions == 14 - 4 and second.num_predictions == 14
    assert first.stats["segm"]["AR100"] < second.stats["segm"]["AR100"] == pytest.approx(1.0)
    assert second.stats["segm"] == result.overall.stats["segm"]
    assert "after pass 2" in format_table(result)


def test_match_images_by_path_suffix() -> None:
    gt_images = [
        {"id": 1, "file_name": "val2017/a.jpg"},
        {"id": 2, "file_name": "train2017/a.jpg"},
        {"id": 3, "file_name": "b.jpg"},
    ]
    match = match_images(
        [(0, "s3://bkt/coco/val2017/a.jpg"), (1, "/d/b.jpg"), (2, "/other/b.jpg"), (3, "/d/c.jpg")], gt_images
    )
    assert match.output_to_gt == {0: 1, 1: 3}
    assert match.ambiguous == ["/other/b.jpg"]
    assert match.missing_in_gt == ["/d/c.jpg"]
    assert match.missing_in_output == ["train2017/a.jpg"]


def test_ochuman_style_gt_without_area_goes_through_xtcocotools(testdata: Path) -> None:
    from tests.conftest import require_shared

    gt = _load(require_shared(testdata, "ochuman") / "test_ochuman.json")
    for ann in gt["annotations"]:
        del ann["area"]  # as in OCHuman/CrowdPose-style files: pycocotools' COCOeval needs it
    with pytest.raises(EvaluationError, match="area"):
        choose_backend(gt, "pycocotools")
    pytest.importorskip("xtcocotools")
    assert choose_backend(gt) == "xtcocotools"
    result = evaluate_output(gt_as_output(gt), gt)
    assert result.backend == {"keypoints": "xtcocotools", "segm": "pycocotools", "bbox": "pycocotools"}
    for iou_type in ("keypoints", "segm", "bbox"):
        assert result.overall.stats[iou_type]["AP"] == pytest.approx(1.0), iou_type


def test_ochuman_gt_with_area_matches_pycocotools_direct(testdata: Path) -> None:
    from tests.conftest import require_shared

    gt_path = require_shared(testdata, "ochuman") / "test_ochuman.json"
    gt = _load(gt_path)
    rng = np.random.default_rng(3)

    def jittered(ann: dict[str, Any]) -> np.ndarray:
        kpts = gt_keypoints_as_predictions(ann)
        kpts[:, :2] += rng.normal(0.0, 12.0, size=(17, 2))
        return kpts

    output = gt_as_output(gt, keypoints_of=jittered)
    result = evaluate_output(output, gt, iou_types=("keypoints",))
    kpts = np.stack(output.instances.column("keypoints").to_pylist()).reshape(len(gt["annotations"]), -1)
    direct = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": kpts[k].tolist(), "score": 1.0}
        for k, a in enumerate(gt["annotations"])
    ]
    assert result.overall.stats["keypoints"]["AP"] == pytest.approx(pycocotools_stats(gt_path, direct, "keypoints")[0])


def test_cli_eval_writes_eval_json_from_parquet_parts(tmp_path: Path, coco_gt_path: Path) -> None:
    from jobs.cli_inspect import build_parser

    output = gt_as_output(_load(coco_gt_path))
    for kind, table in (("images", output.images), ("instances", output.instances)):
        (tmp_path / kind).mkdir()
        pq.write_table(table, tmp_path / kind / "shard-000000-a1.parquet")
    assert load_output(str(tmp_path)).instances.num_rows == 14
    args = build_parser().parse_args(["eval", str(tmp_path), "--gt", str(coco_gt_path)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["overall"]["bbox"]["AP"] == pytest.approx(1.0)
    assert written["gt"] == str(coco_gt_path)
    assert "keypoints" in out.getvalue() and "matched" in out.getvalue()


def test_gt_people_without_a_mask_are_crowd_regions_for_mask_ap(testdata: Path) -> None:
    from tests.conftest import require_shared

    gt = _load(require_shared(testdata, "ochuman") / "test_ochuman.json")
    output = gt_as_output(gt)  # predictions made while every GT person still had a mask
    gt["annotations"][1]["segmentation"] = None
    result = evaluate_output(output, gt, iou_types=("segm", "keypoints"))
    assert result.gt_without_mask == 1
    # The person without a mask neither counts as missed nor makes its prediction a false positive.
    assert result.overall.stats["segm"]["AP"] == pytest.approx(1.0)
    assert result.overall.stats["keypoints"]["AP"] == pytest.approx(1.0)


def test_the_result_round_trips_through_eval_json(coco_gt_path: Path) -> None:
    """``eval.json`` is ``to_dict()``; the report reads it back with ``from_dict`` into the same result."""
    from bmp_core.analysis.evaluation import EvaluationResult

    gt = _load(coco_gt_path)
    result = evaluate_output(gt_as_output(gt), gt, iou_types=("keypoints", "bbox"))
    written = json.loads(json.dumps(result.to_dict()))
    assert list(written) == ["backend", "box_source", "iou_types", "images", "gt_without_mask", "keypoint_layout",
                             "overall", "per_iteration", "oks_scale", "visibility"]
    assert list(written["overall"]) == ["num_predictions", "keypoints", "bbox"]
    assert EvaluationResult.from_dict(written) == result
    assert format_table(EvaluationResult.from_dict(written)) == format_table(result)
