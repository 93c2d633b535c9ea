"""Measure how each export-policy threshold moves the kept people's precision and recall (docs/exports.md).

For every case (a bmp-label output and the COCO ground truth of its images) and every setting of one
threshold (the others at their "keep everything" value), the policy is applied with the export's
own ``decide`` and the kept people are matched to the ground truth by pycocotools' ``COCOeval``
(greedy by score, OKS >= 0.5 for keypoints, mask IoU >= 0.5 for masks; crowd and unlabeled ground
truth ignored as COCOeval does). Printed per setting:

- kept / ignored / dropped people;
- ``P_kpt``, ``R_kpt``: kept people matched at OKS 0.5 / kept, matched ground truth / ground truth;
- ``P_mask``, ``R_mask``: the same at mask IoU 0.5;
- ``bg``: ground-truth people neither matched by a kept mask nor at least half covered by ignore
  regions: people a trainer would be taught as background (lower is better);
- ``lost``: ignored or dropped people that would have matched a ground-truth person at OKS 0.5
  (good targets the policy threw away).

``--keypoints`` adds the per-keypoint sweep of ``keypoint_thr``: on kept people matched at OKS 0.5,
a keypoint is *right* when its own OKS term is >= 0.5 (the COCO tolerance: about one sigma of that
keypoint at the person's scale); labeled precision = right labeled / labeled (on keypoints the ground
truth labels), recall = right labeled / ground-truth labeled.

Usage (the outputs come from the lite quick start, see docs/exports.md):

    python scripts/measure_policy.py --case demo out/demo examples/ground_truth.json \\
        --case ochuman out/ochuman $OCHUMAN/test_ochuman.json --keypoints
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.coco_meta import SIGMAS
from bmp_core.io.image_matching import match_images
from bmp_core.ops.rle import decode_rle
from bmp_core.output.export.policy import Decision, ExportPolicy, decide
from bmp_core.output.reader import load_output
from bmp_core.output.tables import keypoints_array, rles_of

# One threshold at a time, the others at their keep-everything value.
SWEEPS: dict[str, tuple[float, ...]] = {
    "min_det_score": (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5),
    "min_pose_score": (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "min_sam_score": (0.0, 0.5, 0.7, 0.8, 0.9, 0.95),
    "min_visible_keypoints": (0, 1, 3, 5, 8, 10, 12),
    "min_mask_area_px": (0, 1, 100, 500, 1000, 2000),
}
KEYPOINT_THRS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
OPEN = ExportPolicy(keypoint_thr=0.3)  # keeps everybody (keypoint_thr only counts visible keypoints)


@dataclass
class Case:
    """One output matched to its ground truth: the instances of matched images and the GT as COCO."""

    name: str
    instances: pa.Table
    gt_image_of: np.ndarray  # (N,) ground-truth image id of each instance row
    coco: Any  # pycocotools COCO


def load_case(name: str, output_uri: str, gt_path: str) -> Case:
    from pycocotools.coco import COCO

    output = load_output(output_uri)
    images = output.images.filter(pc.equal(output.images.column("status"), "ok"))
    gt = json.loads(Path(gt_path).read_text())
    pairs = zip(images.column("image_id").to_pylist(), images.column("uri").to_pylist(), strict=True)
    match = match_images(list(pairs), gt["images"])
    ids = pa.array(list(match.output_to_gt), pa.int64())
    inst = output.instances.filter(pc.is_in(output.instances.column("image_id"), value_set=ids))
    gt = copy.deepcopy(gt)
    gt["images"] = [im for im in gt["images"] if im["id"] in set(match.output_to_gt.values())]
    for a in gt["annotations"]:
        a.setdefault("iscrowd", 0)
        a.setdefault("num_keypoints", int(np.count_nonzero(np.asarray(a["keypoints"])[2::3] > 0)))
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    gt_of = np.array([match.output_to_gt[i] for i in inst.column("image_id").to_pylist()], np.int64)
    return Case(name, inst, gt_of, coco)


def coco_matches(case: Case, rows: np.ndarray, iou_type: str) -> tuple[dict[int, int], int]:
    """pycocotools' matching of the instance rows ``rows`` at IoU/OKS 0.5.

    Returns:
        (row -> matched ground-truth annotation id, for the matched rows; number of scored GT people).
    """
    from pycocotools.cocoeval import COCOeval

    gt_ids = case.coco.getAnnIds(imgIds=case.coco.getImgIds())
    num_gt = sum(1 for a in case.coco.loadAnns(gt_ids) if not a["iscrowd"]
                 and (iou_type != "keypoints" or a["num_keypoints"] > 0))
    if len(rows) == 0:
        return {}, num_gt
    sub = case.instances.take(pa.array(rows))
    kpts = keypoints_array(sub).astype(np.float64)
    results = []
    for k, rle in enumerate(rles_of(sub)):
        base = {"image_id": int(case.gt_image_of[rows[k]]), "category_id": 1}
        if iou_type == "keypoints":
            results.append({**base, "keypoints": kpts[k].reshape(-1).tolist(),
                            "score": float(sub.column("pose_score")[k].as_py())})
        else:
            results.append({**base, "segmentation": rle, "score": float(sub.column("det_score")[k].as_py())})
    with contextlib.redirect_stdout(io.StringIO()):
        dt = case.coco.loadRes(results)  # result k gets id k + 1
        ev = COCOeval(case.coco, dt, iou_type)
        p = ev.params
        p.iouThrs, p.maxDets, p.areaRng, p.areaRngLbl = np.array([0.5]), [100], [[0, 1e10]], ["all"]
        ev.evaluate()
    matched: dict[int, int] = {}
    for e in ev.evalImgs:
        if e is None:
            continue
        for dt_id, gt_id, ignored in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0], strict=True):
            if gt_id > 0 and not ignored:
                matched[int(rows[dt_id - 1])] = int(gt_id)
    return matched, num_gt


def background_people(case: Case, kept_mask_matches: dict[int, int], ignored_rows: np.ndarray) -> int:
    """GT people (not crowd) matched by no kept mask and covered less than half by ignore regions."""
    bg = 0
    matched_gt = set(kept_mask_matches.values())
    for img_id in case.coco.getImgIds():
        anns = [a for a in case.coco.loadAnns(case.coco.getAnnIds(imgIds=img_id)) if not a["iscrowd"]]
        rows = ignored_rows[case.gt_image_of[ignored_rows] == img_id]
        info = case.coco.imgs[img_id]
        union = np.zeros((info["height"], info["width"]), bool)
        if len(rows):
            union = decode_rle(rles_of(case.instances.take(pa.array(rows))), info["height"], info["width"]).any(0)
        for a in anns:
            if a["id"] in matched_gt:
                continue
            gt_mask = case.coco.annToMask(a).astype(bool)
            if gt_mask.sum() == 0 or (union & gt_mask).sum() / gt_mask.sum() < 0.5:
                bg += 1
    return bg


def measure(case: Case, policy: ExportPolicy, all_kpt_matches: dict[int, int]) -> dict[str, Any]:
    dec = decide(case.instances, policy).decision
    kept = np.flatnonzero(dec == Decision.KEEP)
    ignored = np.flatnonzero(dec == Decision.IGNORE)
    kpt, num_gt_kpt = coco_matches(case, kept, "keypoints")
    seg, num_gt_seg = coco_matches(case, kept, "segm")
    lost = sum(1 for r in all_kpt_matches if dec[r] != Decision.KEEP)
    return {
        "kept": len(kept), "ignored": len(ignored), "dropped": int((dec == Decision.DROP).sum()),
        "P_kpt": len(kpt) / max(len(kept), 1), "R_kpt": len(set(kpt.values())) / max(num_gt_kpt, 1),
        "P_mask": len(seg) / max(len(kept), 1), "R_mask": len(set(seg.values())) / max(num_gt_seg, 1),
        "bg": background_people(case, seg, ignored), "lost": lost, "gt": num_gt_seg,
    }


def keypoint_sweep(case: Case, kpt_matches: dict[int, int]) -> list[dict[str, Any]]:
    """Per-keypoint labeled precision / recall of ``keypoint_thr`` on people matched at OKS 0.5."""
    rows = np.array(sorted(kpt_matches), np.int64)
    if len(rows) == 0:
        return []
    kpts = keypoints_array(case.instances.take(pa.array(rows))).astype(np.float64)
    anns = case.coco.loadAnns([kpt_matches[int(r)] for r in rows])
    gt = np.array([a["keypoints"] for a in anns], np.float64).reshape(len(rows), 17, 3)
    area = np.array([a["area"] for a in anns], np.float64)[:, None]
    d2 = ((kpts[:, :, :2] - gt[:, :, :2]) ** 2).sum(axis=2)
    term = np.exp(-d2 / (2 * area * (2 * SIGMAS) ** 2 + np.spacing(1)))
    gt_labeled = gt[:, :, 2] > 0
    right = term >= 0.5
    out = []
    for thr in KEYPOINT_THRS:
        labeled = (kpts[:, :, 2] >= thr) & gt_labeled
        out.append({"keypoint_thr": thr, "labeled": int(labeled.sum()),
                    "precision": float((labeled & right).sum() / max(labeled.sum(), 1)),
                    "recall": float((labeled & right).sum() / max(gt_labeled.sum(), 1)),
                    "labeled_where_gt_unlabeled": int(((kpts[:, :, 2] >= thr) & ~gt_labeled).sum())})
    return out


def _row(name: str, value: Any, m: dict[str, Any]) -> str:
    return (f"| {name} | {value:g} | {m['kept']} | {m['ignored']} | {m['dropped']} | {m['P_kpt']:.2f} | "
            f"{m['R_kpt']:.2f} | {m['P_mask']:.2f} | {m['R_mask']:.2f} | {m['bg']} | {m['lost']} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--case", nargs=3, action="append", required=True, metavar=("NAME", "OUTPUT", "GT"),
                        help="a bmp-label output and the COCO ground truth of its images")
    parser.add_argument("--policy", default=None, metavar="JSON",
                        help='a policy to measure as a whole too, e.g. \'{"min_pose_score": 0.5}\'')
    parser.add_argument("--keypoints", action="store_true", help="also sweep keypoint_thr per keypoint")
    args = parser.parse_args(argv)
    header = ("| threshold | value | kept | ignored | dropped | P_kpt | R_kpt | P_mask | R_mask | bg | lost |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    for name, output_uri, gt_path in args.case:
        case = load_case(name, output_uri, gt_path)
        all_kpt, _ = coco_matches(case, np.arange(case.instances.num_rows), "keypoints")
        print(f"\n### {name}: {case.instances.num_rows} people on {len(case.coco.getImgIds())} images, "
              f"{measure(case, OPEN, all_kpt)['gt']} ground-truth people\n\n{header}")
        for field, values in SWEEPS.items():
            for value in values:
                policy = dataclasses.replace(OPEN, **{field: type(getattr(OPEN, field))(value)})
                print(_row(field, value, measure(case, policy, all_kpt)))
        if args.policy:
            chosen = dataclasses.replace(OPEN, **json.loads(args.policy))
            print(_row("chosen", 0, measure(case, chosen, all_kpt)).replace("| 0 |", "| all |", 1))
        if args.keypoints:
            print("\n| keypoint_thr | labeled | precision | recall | labeled where GT is not |\n|---|---|---|---|---|")
            for r in keypoint_sweep(case, all_kpt):
                print(f"| {r['keypoint_thr']:g} | {r['labeled']} | {r['precision']:.3f} | {r['recall']:.3f} | "
                      f"{r['labeled_where_gt_unlabeled']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
