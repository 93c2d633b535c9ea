"""``bmp-label viz | eval | report``: look at and measure a finished output (no Ray, no GPU).

Usage::

    bmp-label viz OUT [--images ID|GLOB ...] [--out DIR] [--gif] [--limit N] [--all] [policy options]
    bmp-label eval OUT --gt GT.json [--iou-types keypoints segm bbox] [--backend auto] [--out OUT/eval.json]
    bmp-label report OUT [--out OUT/report.html] [--samples 12] [policy options]

``viz`` and ``report`` show the output as an export would take it: by the export policy that
``bmp-label export`` applies with the same options (the output backend's default policy, or
``--policy DEST/export.json``, with any threshold changed by its option; jobs/cli_policy.py).

``jobs/cli.py`` registers these with ``add_subparsers(subparsers)``; each sub-parser sets
``func`` to its ``cmd_*`` function, which returns the process exit code. ``python -m jobs.cli_inspect``
runs them on their own.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import logging
import sys
from collections.abc import Sequence

import numpy as np

from bmp_core.output import layout
from bmp_core.output.export.policy import ExportPolicy, ResolvedPolicy
from bmp_core.output.reader import JobOutput, image_labels, load_output, read_image_rgb
from bmp_core.output.store import OutputStore
from bmp_core.records import Instances

logger = logging.getLogger(__name__)

DEFAULT_VIZ_LIMIT = 100  # images drawn when none are named: an output may hold millions


def add_subparsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``viz``, ``eval`` and ``report`` to a parser's sub-commands."""
    from jobs.cli_policy import add_policy_options

    viz = subparsers.add_parser(
        "viz", help="draw the labels a trainer gets (kept people, grey ignore regions) on the images (and GIFs)",
        description="Draw each image's labels by the export policy: kept people in colour with their skeletons, "
        "ignore regions as grey hatching, dropped people not drawn (--all: every person of the output).")
    viz.add_argument("output", help="a bmp-label output folder or s3:// prefix")
    viz.add_argument("--images", nargs="+", default=None, metavar="ID|GLOB",
                     help="image ids, or globs on the image uri or file name ('000123.jpg', 's3://b/crowd/*')")
    viz.add_argument("--out", default=None, help="where to write the pictures (default OUTPUT/viz)")
    viz.add_argument("--gif", action="store_true", help="also animate the BMP passes (needs a run with trace on)")
    viz.add_argument("--limit", type=int, default=DEFAULT_VIZ_LIMIT, help="at most this many images (0: all)")
    viz.add_argument("--all", action="store_true",
                     help="draw every person of the output as it is (no policy; keypoints under --keypoint-thr "
                     "hidden)")
    viz.add_argument("--sheet", default=None, metavar="FILE.jpg",
                     help="also tile the drawn pictures into one (2 per row, --sheet-width pixels wide)")
    viz.add_argument("--sheet-width", type=int, default=1000, help="width of the --sheet picture (default 1000)")
    viz.add_argument("--no-masks", action="store_true", help="do not draw masks")
    viz.add_argument("--no-pose", action="store_true", help="do not draw skeletons")
    viz.add_argument("--no-boxes", action="store_true", help="do not draw boxes and scores")
    add_policy_options(viz, "policy (what is kept, ignored, dropped)", splits=False)
    viz.set_defaults(func=cmd_viz)

    ev = subparsers.add_parser("eval", help="COCO AP/AR of the labels against ground truth")
    ev.add_argument("output", help="a bmp-label output folder or s3:// prefix")
    ev.add_argument("--gt", required=True, help="COCO-format person keypoints ground truth (JSON)")
    ev.add_argument("--iou-types", nargs="+", default=["keypoints", "segm", "bbox"],
                    choices=["keypoints", "segm", "bbox"])
    ev.add_argument("--backend", default="auto", choices=["auto", "pycocotools", "xtcocotools"],
                    help="auto: xtcocotools only for ground truth pycocotools cannot score (OCHuman style)")
    ev.add_argument("--box-source", default="detector", choices=["detector", "mask"],
                    help="bbox AP of the detector boxes or of the refined masks' tight boxes")
    ev.add_argument("--oks-scale", default="auto", choices=["auto", "area", "box"],
                    help="keypoint OKS scale: the GT's area, or 0.53 x box area (OCHuman's convention); auto: box "
                    "for GT without area (OCHuman) and for OCHuman-Pose (by name), else area")
    ev.add_argument("--overall-only", action="store_true",
                    help="skip the per-pass scores (each pass costs one more COCOeval run per type)")
    ev.add_argument("--out", default=None, help="where to write the result (default OUTPUT/eval.json)")
    ev.set_defaults(func=cmd_eval)

    rep = subparsers.add_parser("report", help="one self-contained report.html for an output")
    rep.add_argument("output", help="a bmp-label output folder or s3:// prefix")
    rep.add_argument("--out", default=None, help="the HTML file (default OUTPUT/report.html)")
    rep.add_argument("--samples", type=int, default=12, help="sample overlays in the grid")
    add_policy_options(rep, "policy (counted, drawn on the histograms and the samples)", splits=False)
    rep.set_defaults(func=cmd_report)


def _load(output_uri: str, full_instances: bool = True) -> JobOutput | None:
    """The output, or None after printing why it cannot be read (exit status 2)."""
    try:
        return load_output(output_uri, full_instances)
    except (FileNotFoundError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the inspect sub-commands (tests and ``python -m jobs.cli_inspect``)."""
    parser = argparse.ArgumentParser(prog="bmp-label", description=__doc__.split("\n")[0])
    add_subparsers(parser.add_subparsers(dest="command", required=True))
    return parser


def select_images(output: JobOutput, patterns: Sequence[str] | None, limit: int) -> list[tuple[int, str, int, int]]:
    """``(image_id, uri, width, height)`` of the ok images named by ids or uri globs, capped at ``limit``."""
    import pyarrow.compute as pc

    ok = output.images.filter(pc.equal(output.images.column("status"), "ok"))
    rows = list(zip(*(ok.column(c).to_pylist() for c in ("image_id", "uri", "width", "height")), strict=True))
    if patterns:
        ids = {int(p) for p in patterns if p.isdigit()}
        globs = [p for p in patterns if not p.isdigit()]
        # A glob matches the whole uri or just the file name ('000123.jpg', '*_crowd_*.png').
        rows = [r for r in rows if r[0] in ids
                or any(fnmatch.fnmatch(r[1], g) or fnmatch.fnmatch(_file_name(r[1]), g) for g in globs)]
    return rows[:limit] if limit > 0 else rows


def _file_name(uri: str) -> str:
    return uri.replace("\\", "/").rsplit("/", 1)[-1]


def _policy(args: argparse.Namespace) -> ResolvedPolicy | None:
    """The policy of the options, or None after printing why not (exit status 2)."""
    from bmp_core.output.export.policy import PolicyError
    from bmp_core.output.store import OutputStateError
    from jobs.cli_policy import policy_from_args

    try:
        return policy_from_args(args, args.output)
    except PolicyError as err:
        print(f"bmp-label {args.command}: {err}", file=sys.stderr)
        return None
    except OutputStateError as err:  # no config.yaml: the backend, so its default policy, is unknown
        hint = " or --all" if args.command == "viz" else ""
        print(f"bmp-label {args.command}: {err}; give the policy with --policy EXPORT_JSON{hint}", file=sys.stderr)
        return None


def cmd_viz(args: argparse.Namespace) -> int:
    """Draw the labels of the chosen images, as JPEGs (and GIFs of the passes with ``--gif``)."""
    from tqdm import tqdm

    from bmp_core.analysis import viz
    from bmp_core.output.export.policy import Decision, decide
    from bmp_core.output.traces import load_traces

    output = _load(args.output, full_instances=False)  # masks are read per drawn image
    if output is None:
        return 2
    if args.all and not OutputStore(args.output).exists(layout.CONFIG_YAML):
        # --all needs no policy, only a keypoint threshold: an output without config.yaml is drawn too.
        resolved = ResolvedPolicy(ExportPolicy(keypoint_thr=args.keypoint_thr or 0.3), "options")
    else:
        resolved = _policy(args)
    if resolved is None:
        return 2
    policy = resolved.policy
    store = OutputStore(args.output)
    out_store = OutputStore(args.out) if args.out else OutputStore(store.uri_of(layout.VIZ_DIR))
    out_dir = out_store.uri
    style = viz.DrawStyle(keypoint_thr=policy.keypoint_thr, draw_masks=not args.no_masks,
                          draw_pose=not args.no_pose, draw_boxes=not args.no_boxes)
    rows = select_images(output, args.images, args.limit)
    if not rows:
        print(f"no labeled image matches {args.images}", file=sys.stderr)
        return 1
    written, no_trace, sheet = 0, [], []
    for image_id, uri, width, height in tqdm(rows, desc="viz", unit="img"):
        image_rgb = read_image_rgb(uri)
        table = output.instances_of(image_id)
        labels = image_labels(table, height, width)
        stem = f"{image_id:08d}_{_file_name(uri).rsplit('.', 1)[0]}"
        keep = ignore = None
        if args.all:
            overlay = viz.draw_labels(image_rgb, labels, style, title=f"all {len(labels.masks)} people (no policy)")
        else:
            decision = decide(table, policy).decision
            keep, ignore = decision == Decision.KEEP, decision == Decision.IGNORE
            overlay = viz.draw_decided(image_rgb, labels, keep, ignore, style, title=decided_title(decision))
        out_store.write_bytes(f"{stem}.jpg", viz.encode_image(overlay))
        written += 1
        if args.sheet:
            sheet.append(overlay)
        if args.gif:
            traces = load_traces(store, image_id, np.ascontiguousarray(image_rgb[:, :, ::-1]))
            if traces is None:
                no_trace.append(image_id)
                continue
            instances = _instances_for_gif(output, image_id, height, width)
            frames = viz.iteration_frames(image_rgb, traces, instances, style, keep=keep, ignore=ignore)
            out_store.write_bytes(f"{stem}.gif", viz.encode_gif(frames))
    drawn = "every person (--all)" if args.all else f"policy {resolved.source}"
    print(f"wrote {written} overlay(s) to {out_dir} ({drawn})")
    if args.sheet:
        data = viz.encode_image(viz.contact_sheet(sheet, width=args.sheet_width), quality=75)  # a README-sized file
        print(f"wrote {_write_file(args.sheet, args.output, args.sheet, data)} ({len(data) // 1024} KiB)")
    if no_trace:
        print(f"no GIF for {len(no_trace)} image(s) without traces (run with trace: true): {no_trace[:10]}",
              file=sys.stderr)
    return 0


def decided_title(decision: np.ndarray) -> str:
    """``"3 kept, 5 ignored, 23 dropped"`` of one image's ``Decision`` values."""
    from bmp_core.output.export.policy import Decision

    counts = [int((decision == d).sum()) for d in (Decision.KEEP, Decision.IGNORE, Decision.DROP)]
    return "{} kept, {} ignored, {} dropped".format(*counts)


def _instances_for_gif(output: JobOutput, image_id: int, height: int, width: int) -> Instances:
    """The image's rows as ``Instances`` (the fields ``iteration_frames`` draws; the rest zeroed)."""
    labels = image_labels(output.instances_of(image_id), height, width)
    n = len(labels.masks)
    return Instances(
        boxes_xyxy=labels.boxes_xyxy, det_scores=labels.det_scores, keypoints=labels.keypoints,
        pose_scores=labels.pose_scores, sam_scores=np.full(n, np.nan, np.float32), masks=labels.masks,
        det_masks=np.zeros_like(labels.masks), det_mask_iou=np.zeros(n, np.float32), iteration=labels.iteration,
        mask_boxes_xyxy=np.full((n, 4), np.nan, np.float32), prompts=np.zeros((n, 0, 3), np.float32),
        prompted=np.ones(n, bool), keypoint_presence=labels.keypoint_presence,
        keypoint_visibility=labels.keypoint_visibility,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """Score the output against ``--gt``; print the table and write ``eval.json``."""
    from bmp_core.analysis.evaluation import EvaluationError, evaluate_output, format_table, load_gt

    output = _load(args.output)
    if output is None:
        return 2
    try:
        gt = load_gt(args.gt)
        result = evaluate_output(output, gt, args.iou_types, args.backend, args.box_source,
                                 per_iteration=not args.overall_only, progress=True, oks_scale=args.oks_scale,
                                 gt_path=args.gt)
    except (EvaluationError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = dataclasses.replace(result, gt=args.gt, output=args.output)
    out = _write_file(args.out, args.output, layout.EVAL_JSON, json.dumps(result.to_dict(), indent=1).encode())
    print(format_table(result))
    print(f"wrote {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained ``report.html`` (summary, counts, failures, histograms, samples, eval)."""
    from bmp_core.analysis.report import build_report

    output = _load(args.output, full_instances=False)
    if output is None:
        return 2
    resolved = _policy(args)
    if resolved is None:
        return 2
    html = build_report(output, num_samples=args.samples, policy=resolved.policy, policy_source=resolved.source)
    out = _write_file(args.out, args.output, layout.REPORT_HTML, html.encode())
    print(f"wrote {out} ({len(html) / 1e6:.1f} MB)")
    return 0


def _write_file(out_uri: str | None, output_uri: str, default_name: str, data: bytes) -> str:
    """Write ``data`` to ``out_uri`` (a file anywhere), else to ``OUTPUT/default_name``; returns where."""
    if out_uri is None:
        store, rel = OutputStore(output_uri), default_name
    else:
        parent, _, rel = out_uri.rstrip("/").rpartition("/")
        store = OutputStore(parent or ".")
    store.write_bytes(rel, data)
    return store.uri_of(rel)


# For jobs/cli.py's dispatch table: ``_COMMANDS.update(COMMANDS)``.
COMMANDS = {"viz": cmd_viz, "eval": cmd_eval, "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m jobs.cli_inspect``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
