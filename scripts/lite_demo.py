"""Label a folder of images with the lite (BlazePose) backend, offline, no job needed.

The job does the same at scale (``bmp-label run --config configs/lite_cpu.yaml ...``); this is the
no-Ray version: it runs ``run_bmp`` per image with ``configs/lite_cpu.yaml``: BlazePose's own person
detector finds the people, or ``--boxes`` gives the first pass's (their scores as detector scores); it
draws the people (``bmp_core.analysis.viz``), writes the COCO results, and scores them as
``bmp-label eval`` does when ``--gt`` is given::

    python scripts/lite_demo.py --images examples/images \\
        --boxes examples/detections.json --images-json examples/ground_truth.json \\
        --gt examples/ground_truth.json --out out/lite_demo
    python scripts/lite_demo.py --images examples/images --gt examples/ground_truth.json --out out/lite_demo

Writes ``OUT/<name>.png`` per image and ``OUT/keypoints_results.json`` / ``OUT/segm_results.json``
(COCO results lists; image ids from ``--images-json`` / ``--gt``, else 1..N in file order).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from bmp_core.config import load_config
from bmp_core.io.given_boxes import GivenBoxIndex, load_given_boxes
from bmp_core.loop import run_bmp
from bmp_core.models import build_models

logger = logging.getLogger("lite_demo")
_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "lite_cpu.yaml"


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _coco_ap(gt_path: str, results: list[dict[str, Any]], iou_type: str) -> float:
    """COCO AP of ``results`` on every image of the ground truth, scored as ``bmp-label eval`` scores
    (``bmp_core.analysis.evaluation``: pycocotools, or xtcocotools where pycocotools cannot)."""
    from bmp_core.analysis.evaluation import COCO_LAYOUT, CocoScorer, box_oks_scale, choose_backend, load_gt

    gt = load_gt(gt_path)
    box_scale = box_oks_scale(gt, "auto", gt_path)  # OCHuman and OCHuman-Pose: 0.53 x box area, as eval
    stats = CocoScorer(gt, [im["id"] for im in gt["images"]], choose_backend(gt, "auto", box_scale),
                       COCO_LAYOUT, box_scale).score(results, iou_type)
    return float(stats["AP"]) if stats else 0.0


def label_folder(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Label every image of ``args.images`` that the boxes file names; returns the COCO results."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    from bmp_core.analysis.viz import draw_instances

    cfg = load_config(args.config, args.overrides)
    models = build_models(cfg.models)
    index = None
    if args.boxes is not None:
        index = GivenBoxIndex(load_given_boxes(args.boxes, args.score_thr, args.images_json or args.gt))
    names_json = args.images_json or args.gt
    ids = {}
    if names_json:
        images = json.loads(Path(names_json).read_text())["images"]
        ids = {Path(im["file_name"]).name: im["id"] for im in images}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {"keypoints": [], "segm": []}
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for k, path in enumerate(paths, start=1):
        given = None if index is None else index.lookup(str(path))
        if index is not None and given is None:
            logger.warning("%s: not in %s, skipped", path.name, args.boxes)
            continue
        image_rgb = _read_rgb(path)
        t0 = time.perf_counter()
        result = run_bmp(np.ascontiguousarray(image_rgb[:, :, ::-1]), models, cfg.loop,
                         boxes_xyxy=None if given is None else given.boxes_xyxy,
                         box_scores=None if given is None else given.scores)
        inst = result.instances
        logger.info("%s: %d people, %.0f ms", path.name, len(inst), 1000 * (time.perf_counter() - t0))
        overlay = draw_instances(image_rgb, inst, title="BlazePose (lite)")
        Image.fromarray(overlay).save(out_dir / f"{path.stem}.png")
        for i in range(len(inst)):
            base = {"image_id": ids.get(path.name, k), "category_id": 1, "score": float(inst.pose_scores[i])}
            rle = mask_utils.encode(np.asfortranarray(inst.masks[i].astype(np.uint8)))
            rle_json = {"size": rle["size"], "counts": rle["counts"].decode()}
            results["keypoints"].append({**base, "keypoints": inst.keypoints[i].reshape(-1).tolist()})
            results["segm"].append({**base, "segmentation": rle_json})
    for iou_type, res in results.items():
        (out_dir / f"{iou_type}_results.json").write_text(json.dumps(res))
        if args.gt and res:
            logger.info("%s AP vs %s: %.3f", iou_type, args.gt, _coco_ap(args.gt, res, iou_type))
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python scripts/lite_demo.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--images", required=True, help="folder of .jpg/.png images")
    parser.add_argument("--boxes", default=None,
                        help="COCO detections (results list) or dataset file: the first pass's people "
                             "(default: BlazePose's own detector finds them)")
    parser.add_argument("--images-json", default=None, help="COCO file naming a results list's image ids")
    parser.add_argument("--gt", default=None, help="COCO ground truth: print keypoint and mask AP")
    parser.add_argument("--score-thr", type=float, default=0.0, help="keep boxes with score >= this")
    parser.add_argument("--config", default=str(_CONFIG), help="default: configs/lite_cpu.yaml")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    label_folder(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
