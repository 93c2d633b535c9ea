"""``bmp-label export``: one function per run, whatever the format; writes ``export.json`` last."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from bmp_core.errors import UserError
from bmp_core.io.uris import protocol_of
from bmp_core.output.export.coco import DEFAULT_IMAGES_PER_FILE, write_coco_export
from bmp_core.output.export.manifest import EXPORT_JSON, ExportManifest, ExportTally, package_version
from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.source import ExportShard, iter_export_shards

FORMATS = ("coco", "yolo-pose", "yolo-seg", "label-studio")


@dataclass(frozen=True)
class ExportOptions:
    """Format options (recorded in ``export.json``).

    Attributes:
        images_per_file: COCO: most images in one file.
        review, review_by: label-studio: how many images, chosen how (``label_studio.REVIEW_BY``).
        link: YOLO: ``symlink`` | ``list`` | ``auto``.
        polygon_tolerance_px: YOLO seg / Label Studio polygons: Douglas-Peucker tolerance.
        image_url_prefix: label-studio: put before each URI in ``data.image`` (e.g. a local-files URL).
        coco_segmentation: COCO: ``rle`` (exact) or ``polygon`` (kept people as one polygon each).
        progress: a tqdm bar.
    """

    images_per_file: int = DEFAULT_IMAGES_PER_FILE
    review: int = 100
    review_by: str = "low-confidence"
    link: str = "auto"
    polygon_tolerance_px: float = 1.0
    image_url_prefix: str = ""
    coco_segmentation: str = "rle"
    progress: bool = False


class ExportUsageError(UserError, ValueError):
    """A bad format or option: the CLI prints it as one line and a hint (exit 2)."""

    default_hint = "see 'bmp-label export --help' and docs/exports.md"


def _check_options(fmt: str, options: ExportOptions, dest) -> None:
    """Every option the format reads, checked before DEST is touched: a mistake must not cost the
    previous export there (which ``_prepare_dest`` removes)."""
    if fmt not in FORMATS:
        raise ExportUsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if options.images_per_file < 1:
        raise ExportUsageError(f"--images-per-file must be >= 1, got {options.images_per_file}")
    if fmt == "coco" and options.coco_segmentation not in ("rle", "polygon"):
        raise ExportUsageError(f"--coco-segmentation must be rle or polygon, got {options.coco_segmentation!r}")
    if fmt in ("yolo-pose", "yolo-seg"):
        if options.link not in ("symlink", "list", "auto"):
            raise ExportUsageError(f"--link must be symlink, list or auto, got {options.link!r}")
        if options.link == "symlink" and not dest.is_local:
            raise ExportUsageError("--link symlink needs a local --to folder")
    if fmt == "label-studio":
        from bmp_core.output.export.label_studio import REVIEW_BY

        if options.review < 1:
            raise ExportUsageError(f"--review must be >= 1, got {options.review}")
        if options.review_by not in REVIEW_BY:
            raise ExportUsageError(f"--review-by must be one of {', '.join(REVIEW_BY)}, got {options.review_by!r}")


def _prepare_dest(dest) -> None:
    """DEST must be new, empty, or a previous export (it holds ``export.json``), which is replaced
    whole, so no file of an older, larger export is left beside the new one."""
    names = dest.list_dir("")
    if not names:
        return
    if EXPORT_JSON not in names:
        raise ExportUsageError(f"--to {dest.uri} is not empty and holds no {EXPORT_JSON}: give a new or empty "
                               "folder (a previous export there is replaced)")
    dest.remove(EXPORT_JSON)  # first: a half-replaced export never looks finished
    for name in names:
        dest.remove(name)


def _first_shard_linkable(shards: Iterator[ExportShard]) -> Iterator[ExportShard]:
    """``--link symlink``: the first shard's images are checked before DEST is emptied, so an S3 input is
    refused with the previous export still there. (An input mixing local and remote images is refused when
    the YOLO writer reaches the first remote one.)"""
    first = next(shards, None)
    if first is None:
        return iter(())
    remote = next((uri for uri in first.uris if protocol_of(uri) != "file"), None)
    if remote is not None:
        raise ExportUsageError(f"--link symlink needs local images; {remote} is not")
    return itertools.chain([first], shards)


def export_output(source_uri: str, dest_uri: str, fmt: str, policy: ExportPolicy,
                  options: ExportOptions = ExportOptions(), policy_source: str = "options") -> ExportManifest:
    """Export the output at ``source_uri`` to ``dest_uri`` in ``fmt``; returns the written manifest.

    ``policy_source`` says where ``policy`` came from (``policy.ResolvedPolicy.source``, e.g.
    ``default:lite``); ``export.json`` records it beside the policy.

    Raises:
        ExportUsageError: unknown format, bad option, DEST the source output itself or a folder
            that is neither empty nor a previous export.
        OutputStateError: the source is not a bmp-label output.
    """
    from bmp_core.output.commits import committed_markers
    from bmp_core.output.plan import load_plan
    from bmp_core.output.store import OutputStore

    src, dest = OutputStore(source_uri), OutputStore(dest_uri)
    _check_options(fmt, options, dest)
    if dest.uri.rstrip("/") == src.uri.rstrip("/"):
        raise ExportUsageError("--to must not be the output itself: give a new folder or prefix")
    plan = load_plan(src)
    shards = iter_export_shards(src, policy, progress=options.progress, desc=f"export {fmt}")
    if fmt in ("yolo-pose", "yolo-seg") and options.link == "symlink":
        shards = _first_shard_linkable(shards)
    _prepare_dest(dest)
    tally = ExportTally()
    info = {"source": src.uri, "plan_id": plan.plan_id, "policy": policy.to_dict()}
    recorded: dict = {}
    if fmt == "coco":
        total = sum(m.num_images for m in committed_markers(src, plan.plan_id).values())
        files = [f.__dict__ for f in write_coco_export(
            shards, dest, policy.keypoint_thr, options.images_per_file,
            single=total <= options.images_per_file, tally=tally, info=info,
            segmentation=options.coco_segmentation, polygon_tolerance_px=options.polygon_tolerance_px)]
        recorded = {"images_per_file": options.images_per_file, "segmentation": options.coco_segmentation}
        if options.coco_segmentation == "polygon":
            recorded["polygon_tolerance_px"] = options.polygon_tolerance_px
    elif fmt in ("yolo-pose", "yolo-seg"):
        from bmp_core.output.export.yolo import YoloOptions, write_yolo_export

        yolo = YoloOptions(kind=fmt.split("-")[1], link=options.link,
                           polygon_tolerance_px=options.polygon_tolerance_px)
        try:
            files = write_yolo_export(shards, dest, policy, yolo, tally)
        except ValueError as err:
            raise ExportUsageError(str(err)) from None
        recorded = {"link": yolo.link, "polygon_tolerance_px": yolo.polygon_tolerance_px,
                    "val_is_train": tally.images["val"] == 0}
    else:
        from bmp_core.output.export.label_studio import write_review_export

        files = write_review_export(shards, dest, policy, options.review, options.review_by, tally,
                                    options.image_url_prefix, info, options.polygon_tolerance_px)
        recorded = {"review": options.review, "review_by": options.review_by,
                    "image_url_prefix": options.image_url_prefix,
                    "polygon_tolerance_px": options.polygon_tolerance_px}
    manifest = ExportManifest(format=fmt, source=src.uri, plan_id=plan.plan_id, policy=policy,
                              policy_source=policy_source,
                              counts=tally, files=files, options=recorded,
                              bmp_label_version=package_version())
    dest.write_bytes(EXPORT_JSON, manifest.to_json())
    return manifest
