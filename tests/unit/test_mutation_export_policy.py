"""The export policy by its documented rules (docs/exports.md "The policy", "The default policy" and
"Keypoint visibility flags"): the default policy of each backend read from the docs' own table, which
backend a stored ``models`` section gets, the ranges a policy accepts, every threshold inclusive at its
minimum, the first failed threshold in the documented order, and the COCO ``v = 2 / 1 / 0`` flags as
pycocotools reads them back from an export.

Written for mutation testing of ``bmp_core/output/export/policy.py`` (scripts/mutation.sh,
docs/mutation-scores.md). The outputs are hand-built (tests/export_fixtures.py); no model, no Ray.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from bmp_core.analysis.report import policy_rows
from bmp_core.config import ModelsConfig, PoseModelConfig
from bmp_core.output.export.policy import (
    REASONS,
    Decision,
    ExportPolicy,
    PolicyError,
    decide,
    default_policy,
    keypoint_flags,
    policy_backend,
    resolve_policy,
    split_of,
    split_score,
)
from bmp_core.output.export.run import export_output
from bmp_core.output.reader import load_output
from bmp_core.output.tables import INSTANCES_SCHEMA
from tests.export_fixtures import Image, Person, box_mask, default_keypoints, instances_from_people, write_output

H, W = 48, 64
DOCS = Path(__file__).resolve().parents[2] / "docs" / "exports.md"


def _documented_defaults() -> dict[str, dict[str, float]]:
    """The "default policy of the output's backend" table of docs/exports.md, as field -> value per backend."""
    lines = DOCS.read_text().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| backend (`models.kind`"))
    columns = [c.strip().strip("`") for c in lines[head].strip("|").split("|")]
    table = {}
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        backend = re.match(r"`([a-z0-9-]+)`", cells[0]).group(1)
        like = re.fullmatch(r"as `([a-z0-9-]+)`", cells[1])
        table[backend] = (dict(table[like.group(1)]) if like else
                          {col: float(cell.strip("*")) for col, cell in zip(columns[1:-1], cells[1:-1], strict=True)})
    return table


def test_each_backend_default_is_the_documented_table() -> None:
    documented = _documented_defaults()
    assert set(documented) == {"lite", "bmp", "bmp-v2", "fake"}
    for backend, values in documented.items():
        policy = default_policy(backend)
        assert {k: getattr(policy, k) for k in values} == values, backend
        # "val_fraction (0) and max_ignore_fraction (0.05) are the same for every backend"; the flag table's
        # visibility / presence defaults are 0.5
        assert (policy.val_fraction, policy.max_ignore_fraction) == (0.0, 0.05)
        assert (policy.keypoint_visibility_thr, policy.keypoint_presence_thr) == (0.5, 0.5)
    # ExportPolicy() keeps everybody: every minimum 0 (the keypoint thresholds label, they never remove)
    assert all(getattr(ExportPolicy(), f) == 0 for f in ("min_det_score", "min_pose_score", "min_sam_score",
                                                          "min_visible_keypoints", "min_mask_area_px"))
    with pytest.raises(PolicyError, match=r"^no default policy for backend 'bmp-v3': one of lite, bmp, bmp-v2, "
                                          r"fake$"):
        default_policy("bmp-v3")


@pytest.mark.parametrize(("models", "backend"), [
    (ModelsConfig(kind="lite"), "lite"),
    (ModelsConfig(kind="fake"), "fake"),
    (ModelsConfig(kind="bmp"), "bmp"),  # MaskPose: keypoint score = heatmap maximum
    (ModelsConfig(kind="bmp", pose=PoseModelConfig(config="vitpose-h")), "bmp"),
    (ModelsConfig(kind="bmp", pose=PoseModelConfig(config="maskpose-b-1.1", num_keypoints=23)), "bmp"),
    (ModelsConfig(kind="bmp", pose=PoseModelConfig(config="pmpose-b", num_keypoints=23)), "bmp-v2"),  # predicted OKS
    (ModelsConfig(kind="bmp", pose=PoseModelConfig(config="pmpose-l", num_keypoints=23)), "bmp-v2"),
])
def test_the_backend_follows_models_kind_and_the_pose_model(models: ModelsConfig, backend: str) -> None:
    assert policy_backend(models) == backend
    default_policy(policy_backend(models))  # every backend has a default


RANGED = ("min_det_score", "min_pose_score", "min_sam_score", "keypoint_thr", "max_ignore_fraction",
          "keypoint_visibility_thr", "keypoint_presence_thr")


@pytest.mark.parametrize("name", RANGED)
def test_scores_and_fractions_must_lie_in_zero_to_one_inclusive(name: str) -> None:
    assert getattr(ExportPolicy(**{name: 0.0}), name) == 0.0 and getattr(ExportPolicy(**{name: 1.0}), name) == 1.0
    for bad in (-0.01, 1.01):
        with pytest.raises(PolicyError, match=rf"^{name} must be in \[0, 1\], got {bad}$"):
            ExportPolicy(**{name: bad})


def test_the_other_ranges_and_the_hint() -> None:
    ExportPolicy(val_fraction=0.0, min_visible_keypoints=0, min_mask_area_px=0)
    ExportPolicy(val_fraction=0.99, min_visible_keypoints=17)
    for kwargs, message in [
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
        ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\), got -0.1"),
        ({"min_visible_keypoints": 18}, r"min_visible_keypoints must be in \[0, 17\], got 18"),
        ({"min_visible_keypoints": -1}, r"min_visible_keypoints must be in \[0, 17\], got -1"),
        ({"min_mask_area_px": -1}, r"min_mask_area_px must be >= 0, got -1"),
    ]:
        with pytest.raises(PolicyError, match=f"^{message}$") as err:
            ExportPolicy(**kwargs)
        # a user mistake: one line and a hint naming the options' help and their documentation
        assert isinstance(err.value, ValueError)
        assert "bmp-label export --help" in err.value.hint and "docs/exports.md" in err.value.hint


def test_resolve_policy_replaces_only_the_given_values() -> None:
    base = default_policy("lite")
    same = resolve_policy(base, "default:lite", min_det_score=None, keypoint_thr=None)
    assert same.policy == base and same.source == "default:lite"
    given = resolve_policy(base, "default:lite", min_det_score=0.25, keypoint_thr=None)
    assert given.source == "default:lite+options"
    assert given.policy.to_dict() == {**base.to_dict(), "min_det_score": 0.25}
    assert [f.name for f in fields(ExportPolicy)] == list(given.policy.to_dict())


def test_an_image_is_in_val_only_when_its_score_is_below_the_fraction() -> None:
    for uri in ("/data/a.jpg", "s3://bucket/photos/00042.jpg"):
        score = split_score(uri)
        assert 0.0 < score < 1.0
        # "in val when [its score] is below F": equal to F is train, the next float above it val
        assert split_of(uri, score) == "train" and split_of(uri, float(np.nextafter(score, 1.0))) == "val"


def _kp_scores(scores: list[float]) -> np.ndarray:
    kp = default_keypoints(box_mask(H, W, 2, 2, 20, 40))
    kp[:, 2] = scores
    return kp


def test_every_threshold_is_inclusive_and_the_first_failed_is_reported_in_the_documented_order() -> None:
    policy = ExportPolicy(min_det_score=0.5, min_pose_score=0.5, min_sam_score=0.5, keypoint_thr=0.5,
                          min_visible_keypoints=10, min_mask_area_px=100)
    at = {"det": 0.5, "pose": 0.5, "sam": 0.5, "labeled": 10, "area": 100}  # exactly at every minimum
    below = {"det": 0.25, "pose": 0.25, "sam": 0.25, "labeled": 9, "area": 99}
    keys = list(at)

    def person(values: dict) -> Person:
        mask = np.zeros((H, W), bool)
        mask.flat[: values["area"]] = True  # one pixel per count, from the top-left corner
        labeled = values["labeled"]
        return Person(mask, det_score=values["det"], pose_score=values["pose"], sam_score=values["sam"],
                      keypoints=_kp_scores([0.5] * labeled + [0.49] * (17 - labeled)))

    people = [person(at)]
    for k in range(5):  # fails thresholds k .. 4: the k-th of REASONS is the one reported
        people.append(person({key: (below if i >= k else at)[key] for i, key in enumerate(keys)}))
    for k in range(5):  # fails the k-th alone
        people.append(person({key: (below if i == k else at)[key] for i, key in enumerate(keys)}))
    d = decide(instances_from_people([0], [people]), policy)
    assert list(REASONS) == ["det_score", "pose_score", "sam_score", "visible_keypoints", "mask_area"]
    assert d.decision.tolist() == [Decision.KEEP] + [Decision.IGNORE] * 10
    assert d.reason.tolist() == [-1, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert d.visible_keypoints.tolist() == [10, 9, 9, 9, 9, 10, 10, 10, 10, 9, 10]
    assert d.decision.dtype == d.reason.dtype == np.int8 and d.keypoint_flags.shape == (11, 17)


def test_a_failing_person_is_ignored_down_to_one_mask_pixel_and_dropped_only_without_one() -> None:
    one_px = np.zeros((H, W), bool)
    one_px[5, 5] = True
    empty = np.zeros((H, W), bool)
    people = [Person(one_px, det_score=0.1), Person(empty, det_score=0.1, box_xyxy=(1, 1, 5, 5)),
              Person(empty, box_xyxy=(1, 1, 5, 5))]  # passes every minimum: kept, empty mask or not
    d = decide(instances_from_people([0], [people]), ExportPolicy(min_det_score=0.5))
    assert d.decision.tolist() == [Decision.IGNORE, Decision.DROP, Decision.KEEP]
    assert d.reason.tolist() == [0, 0, -1]


def test_no_sam_score_passes_a_zero_minimum_and_fails_any_other() -> None:
    mask = box_mask(H, W, 2, 2, 20, 40)
    table = instances_from_people([0], [[Person(mask, sam_score=None), Person(mask, sam_score=0.0)]])
    assert decide(table, ExportPolicy(min_sam_score=0.0)).decision.tolist() == [Decision.KEEP] * 2
    smallest = decide(table, ExportPolicy(min_sam_score=0.01))
    assert smallest.decision.tolist() == [Decision.IGNORE] * 2 and smallest.reason.tolist() == [2, 2]


def test_a_table_without_people() -> None:
    d = decide(INSTANCES_SCHEMA.empty_table(), default_policy("bmp"))
    assert d.decision.shape == d.reason.shape == d.visible_keypoints.shape == (0,)
    assert d.keypoint_flags.shape == (0, 17)


def test_a_stored_score_equal_to_the_minimum_passes_where_the_minimum_has_no_exact_float32() -> None:
    """"All inclusive: a score equal to the minimum passes" (``ExportPolicy``), for the person's scores as for
    its keypoints: 0.7 and 0.9 (the lite default's minimums) are stored as the float32 just below them."""
    mask = box_mask(H, W, 2, 2, 30, 40)
    person = Person(mask, det_score=0.7, pose_score=0.7, sam_score=0.9, keypoints=default_keypoints(mask, 0.7))
    table = instances_from_people([0], [[person]])
    policy = ExportPolicy(min_det_score=0.7, min_pose_score=0.7, min_sam_score=0.9, keypoint_thr=0.7)
    d = decide(table, policy)
    assert d.decision.tolist() == [Decision.KEEP] and (d.keypoint_flags == 2).all()
    assert decide(table, default_policy("lite")).decision.tolist() == [Decision.KEEP]


def test_the_report_counts_the_same_people_below_a_minimum_as_the_export(tmp_path: Path) -> None:
    mask = box_mask(H, W, 2, 2, 30, 40)
    people = [Person(mask, det_score=0.7, pose_score=0.7, sam_score=0.9),
              Person(mask, det_score=0.6, pose_score=0.6, sam_score=0.8), Person(mask, sam_score=None)]
    out = write_output(str(tmp_path / "out"), [Image("/x/a.jpg", W, H, people=people)])
    policy = ExportPolicy(min_det_score=0.7, min_pose_score=0.7, min_sam_score=0.9)
    below = {row[0]: row[2] for row in policy_rows(load_output(out), policy)}
    assert below["min_det_score"] == below["min_pose_score"] == 1 and below["min_sam_score"] == 2
    assert below["not kept by these thresholds"] == 2
    d = decide(instances_from_people([0], [people]), policy)
    assert d.decision.tolist() == [Decision.KEEP, Decision.IGNORE, Decision.IGNORE]


# Keypoint flags (docs/exports.md, "Keypoint visibility flags"), with three different thresholds so that
# each rule is seen to use its own: score >= 0.25 labeled, presence >= 0.5 present, visibility >= 0.75 visible.
FLAG_POLICY = ExportPolicy(keypoint_thr=0.25, keypoint_presence_thr=0.5, keypoint_visibility_thr=0.75)
#        (score, presence, visibility) -> v
FLAG_CASES = [
    ((0.25, 0.5, 0.75), 2),  # every value at its threshold: labeled, present, visible
    ((0.25, 0.5, 0.5), 1),  # visibility below: present but occluded
    ((1.0, 1.0, 0.0), 1),
    ((0.125, 1.0, 1.0), 0),  # score below: unlabeled
    ((0.125, 1.0, 0.0), 0),
    ((1.0, 0.25, 1.0), 0),  # presence below: absent
    ((1.0, 0.25, 0.0), 0),
    ((0.5, 0.75, 0.25), 1),  # each value between two of the thresholds
    ((0.5, 0.75, 1.0), 2),
]
FLAG_CASES += [((0.9, 0.9, 0.9), 2)] * (17 - len(FLAG_CASES))


def _flag_people() -> tuple[list[Person], list[np.ndarray]]:
    score, presence, visibility = (np.array([c[0][i] for c in FLAG_CASES], np.float32) for i in range(3))
    expected = np.array([c[1] for c in FLAG_CASES])
    people, flags = [], []
    # PMPose: both predicted; lite: visibility only; an output with presence only; MaskPose / v1: neither
    for k, (pres, vis) in enumerate([(presence, visibility), (None, visibility), (presence, None), (None, None)]):
        mask = box_mask(H, W, 2 + 15 * k, 2, 10 + 15 * k, 10 + 8 * k)  # each its own area
        kp = default_keypoints(mask)
        kp[:, 2] = score
        people.append(Person(mask, keypoints=kp, presence=pres, visibility=vis))
        v = np.where(score >= 0.25, 2, 0)  # the score alone: v in {0, 2}
        if pres is not None:
            v = np.where(pres < 0.5, 0, v)
        if vis is not None:
            v = np.where((v == 2) & (vis < 0.75), 1, v)
        flags.append(v)
    np.testing.assert_array_equal(flags[0], expected)
    return people, flags


def test_keypoint_flags_follow_the_documented_table() -> None:
    people, expected = _flag_people()
    table = instances_from_people([0], [people])
    d = decide(table, FLAG_POLICY)
    np.testing.assert_array_equal(d.keypoint_flags, np.stack(expected))
    assert d.keypoint_flags.dtype == np.int8
    # the function itself, on (N, 17) arrays with NaN where not predicted
    nan = np.full(17, np.nan, np.float32)
    kp = np.stack([p.keypoints for p in people])
    pres = np.stack([nan if p.presence is None else p.presence for p in people])
    vis = np.stack([nan if p.visibility is None else p.visibility for p in people])
    np.testing.assert_array_equal(keypoint_flags(kp, vis, pres, FLAG_POLICY), d.keypoint_flags)


def test_pycocotools_reads_the_flags_and_occluded_keypoints_count_as_labeled(tmp_path: Path) -> None:
    people, expected = _flag_people()
    out = write_output(str(tmp_path / "out"), [Image("/x/a.jpg", W, H, people=people)])
    labeled = [int((v > 0).sum()) for v in expected]
    # the lite person (visibility only) reaches 15 with its 4 occluded keypoints, 11 without them
    assert labeled == [13, 15, 13, 15] and (expected[1] == 1).sum() == 4
    policy = ExportPolicy(**{**FLAG_POLICY.to_dict(), "min_visible_keypoints": 14})
    export_output(out, str(tmp_path / "coco"), "coco", policy)
    coco = COCO(str(tmp_path / "coco" / "train.json"))
    by_area = {int(p.mask.sum()): (k, p) for k, p in enumerate(people)}
    seen = []
    for ann in coco.loadAnns(coco.getAnnIds()):
        k, person = by_area[int(coco.annToMask(ann).sum())]
        seen.append(k)
        kp = np.array(ann["keypoints"], float).reshape(17, 3)
        if labeled[k] < 14:  # fails min_visible_keypoints: an ignore region, no keypoints
            assert ann["iscrowd"] == 1 and ann["num_keypoints"] == 0 and not kp.any()
            continue
        assert ann["iscrowd"] == 0 and ann["num_keypoints"] == labeled[k]
        np.testing.assert_array_equal(kp[:, 2], expected[k])
        on = expected[k] > 0
        assert (kp[~on] == 0).all()  # unlabeled: x = y = 0
        np.testing.assert_allclose(kp[on, :2], person.keypoints[on, :2], atol=0.01)
    assert sorted(seen) == [0, 1, 2, 3]
