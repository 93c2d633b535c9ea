"""``DEST/export.json``: what an export holds and how it was made (policy, counts, source, version).

Written last, beside the export's files: its presence says the export finished. The counts are
the ones the tests compare with what pycocotools, mmpose and mmdet see in the files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bmp_core.output.export.policy import REASONS, Decision, ExportPolicy
from bmp_core.output.export.source import ExportShard

EXPORT_JSON = "export.json"
EXPORT_FORMAT_VERSION = 1


@dataclass
class ExportTally:
    """Counters filled while an export streams (mutable on purpose: one per export run).

    ``ignored_by_reason`` / ``dropped_by_reason``: people by the first threshold they failed
    (``policy.REASONS``); ``kept + ignored + dropped`` is every person of the exported images.
    ``format_dropped`` holds what a format removed on top of the policy (YOLO: ``images`` left out
    for their ignore area, ``ignored_people_omitted``, ``keypoints_outside_image``).
    """

    images_seen: int = 0
    images_failed: int = 0  # failed in the job: never exported
    images: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    people: dict[str, int] = field(default_factory=lambda: {"kept": 0, "ignored": 0, "dropped": 0})
    people_by_split: dict[str, dict[str, int]] = field(default_factory=dict)
    ignored_by_reason: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    dropped_by_reason: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    format_dropped: dict[str, int] = field(default_factory=dict)

    def add_shard(self, shard: ExportShard, image_mask: list[bool] | None = None) -> None:
        """Count a shard's images and people (``image_mask``: the images the format exported)."""
        self.images_seen += shard.num_images + shard.num_failed_images
        self.images_failed += shard.num_failed_images
        dec, reason = shard.decisions.decision, shard.decisions.reason
        for i, split in enumerate(shard.splits):
            if image_mask is not None and not image_mask[i]:
                continue
            self.images[split] += 1
            lo, hi = int(shard.starts[i]), int(shard.starts[i + 1])
            per = self.people_by_split.setdefault(split, {"kept": 0, "ignored": 0, "dropped": 0})
            for d, r in zip(dec[lo:hi].tolist(), reason[lo:hi].tolist(), strict=True):
                key = ("kept", "ignored", "dropped")[d]
                self.people[key] += 1
                per[key] += 1
                if d == Decision.IGNORE:
                    self.ignored_by_reason[REASONS[r]] += 1
                elif d == Decision.DROP:
                    self.dropped_by_reason[REASONS[r]] += 1

    def add_format_drop(self, what: str, n: int = 1) -> None:
        self.format_dropped[what] = self.format_dropped.get(what, 0) + n

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ExportTally:
        """``export.json``'s ``counts`` read back (keys this version does not know are left out)."""
        return ExportTally(**{k: v for k, v in data.items() if k in ExportTally.__dataclass_fields__})


@dataclass(frozen=True)
class ExportManifest:
    """The content of ``export.json``.

    Attributes:
        format: ``coco`` | ``yolo-pose`` | ``yolo-seg`` | ``label-studio``.
        source: the output the labels come from; plan_id: its plan.
        policy: the ``ExportPolicy`` applied.
        policy_source: where it came from: ``default:<backend>`` (the backend's default policy,
            docs/exports.md), ``export.json:<uri>``, ``options``; ``+options`` when options changed some.
        counts: the ``ExportTally`` of the finished export (``export.json``'s ``counts``).
        files: the export's files (paths inside DEST) with their own counts.
        options: format options (images per file, review selection, link mode).
        bmp_label_version: the package version that wrote it.
    """

    format: str
    source: str
    plan_id: str
    policy: ExportPolicy
    counts: ExportTally
    files: list[dict[str, Any]]
    options: dict[str, Any]
    bmp_label_version: str
    format_version: int = EXPORT_FORMAT_VERSION
    policy_source: str = "options"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["policy"] = self.policy.to_dict()
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode()

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ExportManifest:
        return ExportManifest(
            format=data["format"], source=data["source"], plan_id=data["plan_id"],
            policy=ExportPolicy(**data["policy"]), counts=ExportTally.from_dict(data["counts"]), files=data["files"],
            options=data["options"], bmp_label_version=data["bmp_label_version"],
            format_version=int(data.get("format_version", EXPORT_FORMAT_VERSION)),
            policy_source=data.get("policy_source", "options"),  # older exports: what the options gave
        )


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bmp-label")
    except PackageNotFoundError:
        return "0+unknown"
