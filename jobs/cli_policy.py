"""The export policy options shared by ``export``, ``viz`` and ``report`` (one place, one meaning).

Every threshold defaults to None on the command line: "not given". The policy applied is then, in
order, the given values over ``--policy EXPORT_JSON``'s policy, else over the output's backend default
(``bmp_core.output.export.policy.default_policy``, chosen as docs/exports.md explains).
"""

from __future__ import annotations

import argparse
import json

from bmp_core.output.export.policy import (
    PolicyError,
    ResolvedPolicy,
    default_policy,
    policy_backend,
    resolve_policy,
)

# argparse dest -> ExportPolicy field
POLICY_FIELDS = {
    "min_det_score": "min_det_score", "min_pose_score": "min_pose_score", "min_sam_score": "min_sam_score",
    "keypoint_thr": "keypoint_thr", "min_visible_keypoints": "min_visible_keypoints",
    "min_mask_area": "min_mask_area_px", "val_fraction": "val_fraction",
    "max_ignore_fraction": "max_ignore_fraction",
    "keypoint_visibility_thr": "keypoint_visibility_thr", "keypoint_presence_thr": "keypoint_presence_thr",
}


def add_policy_options(parser: argparse.ArgumentParser, title: str, splits: bool = True) -> None:
    """The policy's thresholds as options (``splits``: also --val-fraction and --max-ignore-fraction)."""
    pol = parser.add_argument_group(
        title, "Unset values come from --policy EXPORT_JSON, else from the default policy of the output's "
        "backend (lite, bmp, bmp-v2: docs/exports.md 'The default policy').")
    pol.add_argument("--policy", default=None, metavar="EXPORT_JSON", dest="policy_json",
                     help="start from the policy an export applied (its export.json)")
    pol.add_argument("--min-det-score", type=float, default=None, help="detector score")
    pol.add_argument("--min-pose-score", type=float, default=None,
                     help="pose score, mean of 17 keypoint scores (PMPose: mean predicted OKS)")
    pol.add_argument("--min-sam-score", type=float, default=None,
                     help="SAM score; > 0 also fails people SAM never prompted")
    pol.add_argument("--keypoint-thr", type=float, default=None,
                     help="keypoints scoring at or above are labeled (v=2, or v=1 when predicted occluded: "
                     "--keypoint-visibility-thr) and drawn")
    pol.add_argument("--keypoint-visibility-thr", type=float, default=None,
                     help="labeled keypoints with predicted visibility at or above are v=2, below v=1 (occluded); "
                     "runs without visibility: always v=2 (default 0.5)")
    pol.add_argument("--keypoint-presence-thr", type=float, default=None,
                     help="keypoints with predicted presence below are v=0 (absent); runs without presence: "
                     "not applied (default 0.5)")
    pol.add_argument("--min-visible-keypoints", type=int, default=None, help="labeled keypoints, v > 0")
    pol.add_argument("--min-mask-area", type=int, default=None, help="refined-mask pixels")
    if splits:
        pol.add_argument("--val-fraction", type=float, default=None,
                         help="share of images in val, by a stable hash of the URI (default 0)")
        pol.add_argument("--max-ignore-fraction", type=float, default=None,
                         help="YOLO: leave out images whose ignore regions cover more of the image (default 0.05)")


def policy_from_args(args: argparse.Namespace, output_uri: str) -> ResolvedPolicy:
    """The policy the options ask for (see the module docstring).

    Raises:
        PolicyError: a value out of range, or --policy is not an export.json (one line for the CLI).
        OutputStateError: no --policy and ``output_uri`` has no readable config.yaml.
    """
    from bmp_core.output.export.manifest import ExportManifest

    if getattr(args, "policy_json", None):
        from bmp_core.io.uris import read_bytes

        try:
            base = ExportManifest.from_dict(json.loads(read_bytes(args.policy_json))).policy
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PolicyError(f"--policy {args.policy_json} is not an export.json: {err}") from None
        source = f"export.json:{args.policy_json}"
    else:
        from bmp_core.output.plan import load_stored_config
        from bmp_core.output.store import OutputStore

        backend = policy_backend(load_stored_config(OutputStore(output_uri)).models)
        base, source = default_policy(backend), f"default:{backend}"
    given = {field: getattr(args, dest, None) for dest, field in POLICY_FIELDS.items()}
    return resolve_policy(base, source, **given)
