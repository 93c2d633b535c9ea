"""bmp-label: pseudo-label people (box, mask, 17 COCO keypoints) in a folder or bucket of images.

Usage:
    bmp-label run --config CONFIG --input URI --output URI [--num-workers N] [--shard-size 256]
                  [--force] [--break-lock] [--address ADDR] [key.path=value ...]
    bmp-label plan --config CONFIG --input URI --output URI [--sample N [--num-workers K]
                   [--gpu-hour-price P]] [key.path=value ...]
    bmp-label validate-config --config CONFIG [key.path=value ...]
    bmp-label weights CONFIG [--to DEST] [--check] [key.path=value ...]
    bmp-label export-coco OUTPUT [--out coco.json] [--keypoint-thr 0.3]
    bmp-label export OUTPUT --format coco|yolo-pose|yolo-seg|label-studio --to DEST [policy options]
    bmp-label viz | eval | report OUTPUT ...   (look at and measure an output: jobs/cli_inspect.py)

--input is a local folder (searched recursively for job.image_extensions), a glob ("imgs/*.jpg"),
a text file with one URI or path per line (.txt/.lst/.list), or an s3:// prefix; or WebDataset .tar
shards (a .tar, a glob "shards/*.tar", a brace pattern "shard-{000000..000999}.tar", a list file of
.tar files: each tar is one shard, streamed by its worker); or Parquet image tables (a .parquet
file, a folder or prefix of them) with --image-column COL [--id-column ID]. --output is a local
folder or an s3:// prefix. Trailing key.path=value arguments override the config (values are YAML).

Local mode (default: no --address, no RAY_ADDRESS) starts Ray on this machine, one worker per GPU,
or one CPU worker (more with --num-workers):

    bmp-label run --config configs/fake.yaml --input examples/images --output out/demo
    bmp-label run --config configs/bmp_d3.yaml --input s3://bucket/photos/ --output s3://bucket/labels/ \\
        job.shard_size=512 loop.iterations=3

On a Ray cluster, submit the same command:

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        bmp-label run --config configs/bmp_d3.yaml --input s3://bucket/photos/ --output s3://bucket/labels/

S3: credentials and region come from the usual AWS variables or profile (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_REGION); AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL points at MinIO / moto / another S3-compatible store.

Rerunning the same command resumes: committed shards are skipped. A rerun with another config or
input is refused unless --force (which discards the output's committed shards).

Exit status: 0 done, 1 the job failed (see the message), 2 bad usage / config / input / output state /
checkpoints / GPUs (one line and a hint; -v adds the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bmp_core.config import BmpConfig, ConfigError, check_job_config, dump_config, load_config
from bmp_core.io.given_boxes import with_absolute_paths

if TYPE_CHECKING:
    from bmp_core.io.sources import InputListing
    from bmp_core.output.plan import Plan

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bmp-label", description=__doc__.split("\n", 1)[0],
        epilog=__doc__.split("\n", 1)[1] + "\nRun 'bmp-label COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--usage", action="store_true", help="print the full usage page with examples")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of a user error (config, paths, checkpoints)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="YAML config, e.g. configs/bmp_d3.yaml or configs/fake.yaml")
        p.add_argument("overrides", nargs="*", metavar="key.path=value",
                       help="config overrides, e.g. loop.iterations=3 job.batch_size=8")

    def with_io(p: argparse.ArgumentParser) -> None:
        p.add_argument("--input", required=True,
                       help="folder, glob, list file (.txt) or s3:// prefix of images; .tar shards (glob, "
                            "shard-{000000..000999}.tar, list file); Parquet files (with --image-column)")
        p.add_argument("--output", required=True, help="local folder or s3:// prefix for the results")
        p.add_argument("--image-column", default=None,
                       help="Parquet input: the column of image bytes or HF Image {bytes, path} (= job.image_column)")
        p.add_argument("--id-column", default=None,
                       help="Parquet input: a column kept as each image's key in the outputs (= job.id_column)")

    run = sub.add_parser("run", help="label images (resumes an unfinished output)",
                         description="Label every image of --input into --output. Rerun to resume.")
    with_io(run)
    run.add_argument("--num-workers", type=int, default=None,
                     help="workers (default: one per GPU in the cluster, or 1 without GPUs)")
    run.add_argument("--shard-size", type=int, default=None,
                     help="images per shard (= job.shard_size, default 256; a tar input: one shard per tar)")
    run.add_argument("--force", action="store_true",
                     help="start over when the output was made with another config or input (discards it)")
    run.add_argument("--break-lock", action="store_true",
                     help="take the output's lock even though another job seems to hold it (only if it is dead)")
    run.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    with_config(run)

    plan = sub.add_parser("plan", help="show the listing, the shards and what a rerun would skip",
                          description="List the input and compare with the output; writes nothing.")
    with_io(plan)
    plan.add_argument("--shard-size", type=int, default=None, help="= job.shard_size")
    plan.add_argument("--show", type=int, default=5, help="how many URIs of the listing to print")
    price = plan.add_argument_group(
        "pricing (--sample)",
        "Label a seeded random sample of N images on one worker with the given config (nothing is written) "
        "and project the whole listing. The worker gets what one of the job's K workers would (one GPU, or "
        "its share of the cores without GPUs). Rate = sample images / seconds of a timed run over the "
        "whole sample, after an untimed warm-up run on its first job.batch_size images (warm-up "
        "excluded); wall = workers start + warm-up (measured) + the shards (job.shard_size images each) "
        "handed to K workers as each frees up, at that rate per worker; GPU-hours = K x wall; cost = "
        "GPU-hours x --gpu-hour-price. Listing, finalize and autoscaling are not included. A tar input "
        "(streamed front to back) samples the first N images of tars taken in a seeded random order, and its "
        "tars' image counts are estimated from their sizes at the sample's images per byte.")
    price.add_argument("--sample", type=int, default=None, metavar="N", help="sample size (e.g. 200)")
    price.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    price.add_argument("--num-workers", type=int, default=None, metavar="K",
                       help="workers to project for (default: as run: one per GPU in the cluster, or 1)")
    price.add_argument("--gpu-hour-price", type=float, default=None, metavar="P",
                       help="price of one GPU-hour (any currency) for the cost line")
    price.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    with_config(plan)

    validate = sub.add_parser("validate-config", help="check a config and print it resolved",
                              description="Load the config with overrides; print the resolved YAML or the error.")
    with_config(validate)

    weights = sub.add_parser(
        "weights", help="fetch and check a config's checkpoints (pre-stage them for a cluster)",
        description="Fetch each checkpoint CONFIG names into the cache (or DEST) and check it: size, sha256, "
                    "and every key and shape against the model the config builds. One line per file.",
        epilog="DEST: a local folder is filled in the cache's layout (use it as models.cache_dir, e.g. an "
               "image's baked weights); an s3:// prefix receives the files as a job stages them (use it as "
               "models.stage_uri). See docs/clusters.md.")
    weights.add_argument("config", help="YAML config, e.g. configs/bmp_d3.yaml")
    weights.add_argument("--to", default=None, metavar="DEST",
                         help="folder or s3:// prefix to fetch into (default: models.cache_dir)")
    weights.add_argument("--check", action="store_true",
                         help="only check what is already there (in the cache or DEST); fetch nothing")
    weights.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")

    export = sub.add_parser("export-coco", help="rebuild coco.json from an output's Parquet tables",
                            description="Write a COCO person-keypoints JSON from the committed shards of OUTPUT.")
    export.add_argument("output", help="a bmp-label output folder or s3:// prefix")
    export.add_argument("--out", default="coco.json", help="file name inside OUTPUT (default coco.json)")
    export.add_argument("--keypoint-thr", type=float, default=None,
                        help="keypoints below this score are written unlabeled (default: job.coco_keypoint_thr)")

    _add_export_parser(sub)

    from jobs import cli_inspect  # viz, eval, report: reading a finished output (no Ray)

    cli_inspect.add_subparsers(sub)
    return parser


EXPORT_EPILOG = """\
Policy: a person passing every --min-* threshold is a training target; one failing any becomes an
ignore region (COCO iscrowd=1 with its mask, no keypoints), or is dropped when its mask is empty.
Thresholds not given come from the default policy of the output's backend (docs/exports.md), or
from --policy EXPORT_JSON; `bmp-label viz` and `report` draw and count by the same policy.
Keypoints scoring below --keypoint-thr are unlabeled (v=0, x=y=0). Where the pose model predicts
visibility and presence (PMPose, lite), a labeled keypoint is v=2 (visible) or v=1 (occluded, visibility
below --keypoint-visibility-thr), and v=0 when its presence is below --keypoint-presence-thr.
Failed images are never exported.
YOLO has no ignore regions: images whose ignore area exceeds --max-ignore-fraction are left out,
below it the ignored people are left out of the labels. The split is a stable hash of each URI.
DEST/export.json records the policy and the counts kept / ignored / dropped per reason.

Examples:
  bmp-label export out/job --format coco --to out/coco --val-fraction 0.05 --min-pose-score 0.5
  bmp-label export s3://b/labels --format yolo-pose --to data/yolo --min-visible-keypoints 6
  bmp-label export out/job --format label-studio --to out/review --review 200 --review-by crowded
"""


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="training data from an output: COCO, YOLO pose/seg, Label Studio review",
                       description="Export the committed shards of OUTPUT to DEST, applying a quality policy.",
                       epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="a bmp-label output folder or s3:// prefix")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="coco | yolo-pose | yolo-seg | label-studio")
    p.add_argument("--to", required=True, metavar="DEST", help="new folder or s3:// prefix for the export")
    from jobs.cli_policy import add_policy_options

    add_policy_options(p, "policy (recorded in DEST/export.json)")
    fmt = p.add_argument_group("format options")
    fmt.add_argument("--images-per-file", type=int, default=50_000, help="COCO: images per file (default 50000)")
    fmt.add_argument("--coco-segmentation", default="rle",
                     help="COCO masks: rle (exact, default) | polygon (one polygon per kept person, for "
                     "pipelines that read polygons only, e.g. mmdet LoadAnnotations(poly2mask=False))")
    fmt.add_argument("--link", default="auto", help="YOLO images: symlink | list | auto (default: symlinks "
                     "when images and DEST are local)")
    fmt.add_argument("--polygon-tolerance", type=float, default=1.0,
                     help="YOLO seg / COCO polygon masks: simplification tolerance in pixels (0: exact)")
    fmt.add_argument("--review", type=int, default=100, help="label-studio: images in the review subset")
    fmt.add_argument("--review-by", default="low-confidence", help="low-confidence | crowded | random")
    fmt.add_argument("--image-url-prefix", default="",
                     help="label-studio: prefix of data.image, e.g. '/data/local-files/?d=' for local files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_export_training(args: argparse.Namespace) -> int:
    from bmp_core.output.export.run import ExportOptions, export_output
    from bmp_core.output.plan import load_plan
    from bmp_core.output.store import OutputStore
    from jobs.cli_policy import policy_from_args

    # PolicyError and ExportUsageError are UserErrors: main() prints them as one line and a hint.
    load_plan(OutputStore(args.output))  # not an output: say so before anything else
    resolved = policy_from_args(args, args.output)
    options = ExportOptions(images_per_file=args.images_per_file, review=args.review, review_by=args.review_by,
                            link=args.link, polygon_tolerance_px=args.polygon_tolerance,
                            image_url_prefix=args.image_url_prefix, coco_segmentation=args.coco_segmentation,
                            progress=not args.no_progress)
    manifest = export_output(args.output, args.to, args.format, resolved.policy, options, resolved.source)
    c = manifest.counts
    print(json.dumps({"export": manifest.format, "to": args.to, "policy": manifest.policy_source,
                      "images": c.images, "people": c.people,
                      "ignored_by_reason": {k: v for k, v in c.ignored_by_reason.items() if v},
                      "format_dropped": c.format_dropped}))
    return EXIT_OK


def _load(args: argparse.Namespace) -> BmpConfig:
    overrides = list(args.overrides)
    if getattr(args, "shard_size", None) is not None:
        overrides.append(f"job.shard_size={args.shard_size}")
    for flag, key in (("image_column", "job.image_column"), ("id_column", "job.id_column")):
        if getattr(args, flag, None) is not None:
            overrides.append(f"{key}={json.dumps(getattr(args, flag))}")  # quoted: a column named "1" stays text
    cfg = load_config(args.config, overrides)
    check_job_config(cfg)  # e.g. models.lite.detect_people: false without job.given_boxes
    return with_absolute_paths(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bmp-label`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.usage:
        print(__doc__)
        return EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from bmp_core.errors import UserError

    try:
        return _COMMANDS[args.command](args)
    except UserError as err:  # the user's input: one line and a hint, the traceback only with -v
        return _user_error(args, str(err), err.hint, err)
    except PermissionError as err:
        return _user_error(args, f"permission denied: {err}", "check the AWS credentials (AWS_ACCESS_KEY_ID / "
                           "AWS_PROFILE) and the bucket policy, or the folder's permissions", err)
    except Exception as err:
        from jobs.ray_runner import JobError

        if isinstance(err, JobError):
            print(f"bmp-label {args.command}: job failed: {err}", file=sys.stderr)
            return EXIT_FAILED
        if type(err).__name__ in ("NoCredentialsError", "PartialCredentialsError", "NoRegionError"):
            # botocore's, raised through s3fs; not imported here so the CLI works without boto.
            return _user_error(args, f"S3 credentials/region not usable: {err}", "set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and AWS_REGION; AWS_ENDPOINT_URL for MinIO/moto",
                               err)
        raise


def _user_error(args: argparse.Namespace, message: str, hint: str, err: BaseException) -> int:
    """Print a user's mistake as ``bmp-label COMMAND: message`` and ``  hint: ...`` (docs/running-jobs.md)."""
    if args.verbose:
        import traceback

        traceback.print_exception(err)
    print(f"bmp-label {args.command}: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}" + ("" if args.verbose else " (-v shows the traceback)"), file=sys.stderr)
    return EXIT_USAGE


def _cmd_validate(args: argparse.Namespace) -> int:
    print(dump_config(_load(args)), end="")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from jobs.ray_runner import RunOptions, run_job

    cfg = _load(args)
    if args.num_workers is not None and args.num_workers < 1:
        raise ConfigError("--num-workers must be >= 1")
    run = run_job(cfg, RunOptions(args.input, args.output, args.num_workers, args.force, args.break_lock,
                                  args.address, progress=not args.no_progress))
    c = run.counts
    print(f"done: {c.images} images ({c.images_ok} labeled, {c.images_error} failed, see errors.csv), "
          f"{c.instances} people; {c.shards_labeled} shard(s) labeled, {c.shards_skipped} skipped as "
          f"already committed -> {run.output}")
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace) -> int:
    from bmp_core.output.commits import committed_markers
    from bmp_core.output.plan import read_plan
    from bmp_core.output.store import OutputStore
    from jobs.planner import file_digests, list_job_input, make_plan

    cfg = _load(args)
    store = OutputStore(args.output)
    files = file_digests(cfg)
    listing = list_job_input(cfg, args.input, store, files)
    plan = make_plan(cfg, listing, files)
    if plan.is_tar:
        print(f"input: {args.input}\n  {plan.num_tars} tar file(s), {_gib(listing.total_bytes)}, listing digest "
              f"{plan.listing_digest[:16]}; their image members are counted by the workers as they stream them")
    else:
        inside = f" in {listing.num_containers} {listing.kind} file(s)" if listing.num_containers else ""
        print(f"input: {args.input}\n  {plan.num_images} images{inside}, listing digest {plan.listing_digest[:16]}")
    for uri in listing.uris.slice(0, args.show).to_pylist():
        print(f"    {uri}")
    if len(listing.uris) > args.show:
        print(f"    ... ({len(listing.uris) - args.show} more)")
    shards = "one per tar" if plan.is_tar else f"of {plan.shard_size} images"
    print(f"shards: {plan.num_shards} {shards}; plan {plan.plan_id}")
    old = read_plan(store)
    if old is None:
        print(f"output: {args.output} is new; a run labels all {plan.num_shards} shard(s)")
    elif old != plan:
        print(f"output: {args.output} holds another plan ({old.plan_id}): a run is refused "
              "without --force (config or input changed)")
    else:
        done = committed_markers(store, plan.plan_id)
        print(f"output: {args.output}: {len(done)} shard(s) committed ({sum(m.num_images for m in done.values())} "
              f"images) and skipped on rerun, {plan.num_shards - len(done)} to do")
    if args.sample is not None:
        _price(cfg, args, listing, plan)
    return EXIT_OK


def _price(cfg: BmpConfig, args: argparse.Namespace, listing: InputListing, plan: Plan) -> None:
    """``plan --sample N``: time a sample on one worker, print the projection (jobs/pricing.py)."""
    from jobs.pricing import format_duration, project, sample_ids, sample_tars
    from jobs.ray_runner import measure_sample

    if args.sample < 1:
        raise ConfigError("--sample must be >= 1")
    if args.num_workers is not None and args.num_workers < 1:
        raise ConfigError("--num-workers must be >= 1")
    if args.gpu_hour_price is not None and args.gpu_hour_price < 0:
        raise ConfigError("--gpu-hour-price must be >= 0")
    if plan.num_images == 0:
        raise ConfigError("--sample: the input has no images")
    if plan.is_tar:
        tar_sample = (sample_tars(listing, args.seed), args.sample)
        timing, num_workers = measure_sample(cfg, listing, [], args.num_workers, args.address, tar_sample)
        if timing.num_images == 0:
            raise ConfigError("--sample: the input's tars hold no image members")
    else:
        ids = sample_ids(plan.num_images or 0, args.sample, args.seed)
        timing, num_workers = measure_sample(cfg, listing, ids, args.num_workers, args.address)
    p = project(timing, plan, num_workers, args.gpu_hour_price, [t.size for t in listing.tars])
    unit = "GPU" if timing.device.endswith("GPU") else "worker"
    of = f"~{p.num_images}" if p.estimated else f"{p.num_images}"
    if p.estimated:
        per_gib = (timing.images_per_byte or 0.0) * (1 << 30)
        print(f"estimate: {p.num_images} images in the {plan.num_tars} tars ({_gib(listing.total_bytes)} at the "
              f"sample's {per_gib:.4g} images per GiB, from {_gib(timing.bytes_read or 0)} of tar streamed)")
    print(f"sample: {timing.num_images} of {of} images (seed {args.seed}) on one worker "
          f"({timing.device}, {timing.worker}): workers start {timing.worker_start_s:.2f} s, warm-up "
          f"{timing.num_warmup} images {timing.warmup_s:.2f} s (excluded), then {timing.num_images} images "
          f"in {timing.labeling_s:.3f} s ({timing.num_errors} errors)")
    print(f"rate: {p.images_per_s_per_worker:.4g} images/s per worker")
    print(f"projection: {of} images in {p.num_shards} shard(s) on {num_workers} worker(s): "
          f"labeling {p.labeling_s:.2f} s + start and warm-up {p.overhead_s:.2f} s = wall {p.wall_s:.2f} s "
          f"({format_duration(p.wall_s)})")
    cost = "" if p.cost is None else f"; cost {p.cost:.4g} at {args.gpu_hour_price:g} per {unit}-hour"
    print(f"{unit}-hours: {p.gpu_hours:.4g} ({num_workers} x wall){cost}")


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / (1 << 30):.3g} GiB" if num_bytes >= 1 << 30 else f"{num_bytes / (1 << 20):.3g} MiB"


def _cmd_weights(args: argparse.Namespace) -> int:
    """``bmp-label weights``: one line per checkpoint (size, sha256, layout verdict); rc 2 if any failed."""
    import dataclasses

    from bmp_core.io.uris import join_uri, protocol_of
    from bmp_core.models.checkpoints import CheckpointError, cache_key
    from bmp_core.models.weights import ModelLayouts, check_checkpoint, checkpoint_refs
    from jobs.staging import stage_file

    models = load_config(args.config, list(args.overrides)).models
    refs = checkpoint_refs(models)
    if not refs:
        raise ConfigError(f"{args.config} names no checkpoint (models.kind {models.kind}, or every "
                          "models.*.checkpoint is null): nothing to fetch or check")
    cache_dir, stage = models.cache_dir, None
    if args.to is not None and protocol_of(args.to) == "file":
        cache_dir = args.to  # a folder in the cache's layout: a models.cache_dir
    elif args.to is not None:
        stage = args.to  # a prefix in the staging layout: a models.stage_uri
    layouts = ModelLayouts(models)
    failed = 0
    for ref in refs:
        if stage is not None and args.check:  # what the stage holds, fetched from there (not the origin)
            ref = dataclasses.replace(ref, uri=join_uri(stage, *cache_key(ref.uri).split("/")))
        try:
            c = check_checkpoint(ref, layouts, fetch=not args.check, cache_dir=cache_dir)
            where = str(c.path)
            if stage is not None and not args.check:
                where = stage_file(c, join_uri(stage, *cache_key(ref.uri).split("/")))
        except CheckpointError as err:
            failed += 1
            print(f"FAILED {ref.role} {ref.uri}: {err}")
            continue
        layout = (f"layout ok ({c.num_tensors} tensors fit {ref.arch})" if c.layout_skipped is None
                  else f"layout not checked: {c.layout_skipped}")
        print(f"ok     {ref.role} {ref.uri} -> {where}: {c.size_bytes / (1 << 20):.1f} MiB, sha256 {c.sha256}, "
              f"{layout}")
    if failed:
        verb = "checked" if args.check else "fetched"
        raise CheckpointError(f"{failed} of {len(refs)} checkpoint(s) not {verb} (see the lines above)")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from bmp_core.output.plan import load_plan, load_stored_config
    from bmp_core.output.store import OutputStore
    from jobs.finalize import export_coco

    store = OutputStore(args.output)
    load_plan(store)  # not an output: say so before anything else
    thr = args.keypoint_thr if args.keypoint_thr is not None else load_stored_config(store).job.coco_keypoint_thr
    counts = export_coco(store, float(thr), args.out)
    print(json.dumps({"coco": store.uri_of(args.out), "images": counts.images, "annotations": counts.annotations}))
    return EXIT_OK


def _inspect_commands() -> dict[str, object]:
    from jobs.cli_inspect import COMMANDS

    return dict(COMMANDS)


_COMMANDS = {"run": _cmd_run, "plan": _cmd_plan, "validate-config": _cmd_validate, "export-coco": _cmd_export,
             "weights": _cmd_weights,
             "export": _cmd_export_training,
             **_inspect_commands()}

if __name__ == "__main__":
    sys.exit(main())
