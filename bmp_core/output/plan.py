"""``OUT/plan.json``: what an output is made from, frozen on the first run and checked on every rerun.

``Plan`` is the record; ``freeze_plan`` writes it (with the listing and the config) into a new
output, or refuses a rerun whose config, input listing or pinned input files differ, naming what
changed. The planner (``jobs/planner.py``) computes plans; this module owns how they are stored.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import yaml

from bmp_core.config import BmpConfig, config_to_dict, dump_config
from bmp_core.io.tars import TAR_ID_STRIDE
from bmp_core.output import layout
from bmp_core.output.commits import committed_markers
from bmp_core.output.store import OutputStateError, OutputStore

logger = logging.getLogger(__name__)

# The ``Plan.file_sha256`` entry that pins an input's tar / Parquet files (``jobs/planner.py`` sets it).
INPUT_CONTAINERS_KEY = "input.containers"


@dataclass(frozen=True)
class Plan:
    """What an output is made from, and how it is cut into shards.

    Loose files and Parquet rows: ``num_images`` listed images, shard ``s`` holds ids
    ``[s * shard_size, min((s + 1) * shard_size, num_images))``. A tar input: ``num_tars`` tars,
    one shard each, ``num_images`` None (the workers count the members as they stream each tar);
    shard ``s``'s images are ``s * TAR_ID_STRIDE + k`` (``bmp_core/io/tars.py``), as many as its
    commit marker says.
    """

    num_images: int | None
    shard_size: int
    listing_digest: str  # sha256 hex of the sorted listing (the tars' URIs for a tar input)
    config_digest: str  # sha256 hex of the result-affecting config and the pinned files' digests
    file_sha256: tuple[tuple[str, str], ...] = ()  # (config key, sha256 hex of the file) of pinned files
    num_tars: int = 0  # a tar input: its tars, one shard each; 0 otherwise

    @property
    def is_tar(self) -> bool:
        return self.num_tars > 0

    @property
    def num_shards(self) -> int:
        if self.is_tar:
            return self.num_tars
        assert self.num_images is not None
        return -(-self.num_images // self.shard_size)

    @property
    def plan_id(self) -> str:
        """Names this plan in commit markers; a marker of another plan is never trusted."""
        return hashlib.sha256(f"{self.listing_digest}:{self.config_digest}".encode()).hexdigest()[:16]

    def first_image_id(self, shard_id: int) -> int:
        """The id of a shard's first image."""
        self._check(shard_id)
        return shard_id * (TAR_ID_STRIDE if self.is_tar else self.shard_size)

    def shard_range(self, shard_id: int) -> tuple[int, int]:
        """[start, stop) image ids of a shard of listed images (not of a tar input: ``first_image_id``)."""
        if self.is_tar:
            raise ValueError("a tar input's shards are counted by their workers: use first_image_id")
        self._check(shard_id)
        assert self.num_images is not None
        start = shard_id * self.shard_size
        return start, min(start + self.shard_size, self.num_images)

    def shard_num_images(self, shard_id: int) -> int | None:
        """Images in a shard; None for a tar (not known before it is streamed)."""
        if self.is_tar:
            self._check(shard_id)
            return None
        start, stop = self.shard_range(shard_id)
        return stop - start

    def _check(self, shard_id: int) -> None:
        if not 0 <= shard_id < self.num_shards:
            raise IndexError(f"shard {shard_id} out of range [0, {self.num_shards})")

    def to_dict(self) -> dict[str, Any]:
        data = {
            "num_images": self.num_images,
            "shard_size": self.shard_size,
            "num_shards": self.num_shards,
            "listing_digest": self.listing_digest,
            "config_digest": self.config_digest,
            "plan_id": self.plan_id,
            "file_sha256": dict(self.file_sha256),
        }
        if self.is_tar:
            data["num_tars"] = self.num_tars
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Plan:
        num_images = data.get("num_images")
        return Plan(None if num_images is None else int(num_images), int(data["shard_size"]), data["listing_digest"],
                    data["config_digest"], tuple(sorted((data.get("file_sha256") or {}).items())),
                    int(data.get("num_tars") or 0))


def read_plan(store: OutputStore) -> Plan | None:
    """The output's plan, or None when it has none (new, or not a bmp-label output)."""
    data = store.read_json(layout.PLAN_JSON)
    return None if data is None else Plan.from_dict(data)


def load_plan(store: OutputStore) -> Plan:
    """The output's plan.

    Raises:
        OutputStateError: the output has no ``plan.json``.
    """
    plan = read_plan(store)
    if plan is None:
        raise OutputStateError(f"{store.uri} has no {layout.PLAN_JSON}: not a bmp-label output (or never started)")
    return plan


def load_stored_config(store: OutputStore) -> BmpConfig:
    """The config the output was made with (``config.yaml``), through the typed loader: defaults of
    keys it does not name are today's defaults, and an unreadable file is an error, not a guess.

    Raises:
        OutputStateError: ``config.yaml`` is missing or not a valid config.
    """
    from bmp_core.config import ConfigError, config_from_dict

    data = store.read_bytes(layout.CONFIG_YAML)
    if data is None:
        raise OutputStateError(f"{store.uri} has no {layout.CONFIG_YAML}: not a bmp-label output (or never started)")
    try:
        return config_from_dict(yaml.safe_load(data) or {})
    except (ConfigError, yaml.YAMLError) as err:
        raise OutputStateError(f"{store.uri_of(layout.CONFIG_YAML)} is not a valid config: {err}") from err


def freeze_plan(store: OutputStore, plan: Plan, listing: pa.Table, cfg: BmpConfig, force: bool = False) -> None:
    """Record ``plan`` in a new output, or check that an existing output was made from the same one.

    Args:
        store: the output.
        plan: the plan of this run (``jobs.planner.make_plan``).
        listing: the sorted listing table (``jobs.planner.listing_table``).
        cfg: the run's resolved config (stored as ``config.yaml``; compared key by key on a mismatch).
        force: discard an output made from another plan instead of refusing.

    Raises:
        OutputStateError: the output holds another plan and ``force`` is False.
    """
    old = read_plan(store)
    if old == plan:
        return
    if old is not None:
        committed = len(committed_markers(store, old.plan_id))
        reason = _plan_difference(store, old, plan, config_to_dict(cfg))
        if not force:
            raise OutputStateError(
                f"{store.uri} was started with a different {reason}.\n"
                f"It holds {committed} committed shard(s) that would not match this run. Use a new "
                "--output, rerun with the original config and input, or pass --force to discard them "
                "and start over."
            )
        logger.warning("--force: discarding %d committed shard(s) of %s (%s)", committed, store.uri,
                       reason.splitlines()[0])
        for rel in layout.RESULTS:
            store.remove(rel)
    # The listing and config go first: plan.json appearing is what makes them authoritative.
    store.write_table(layout.LISTING_PARQUET, listing)
    store.write_bytes(layout.CONFIG_YAML, dump_config(cfg).encode())
    store.write_json(layout.PLAN_JSON, plan.to_dict())


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` lines for every leaf that differs between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_changes(a, b, name + "."))
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def _plan_difference(store: OutputStore, old: Plan, new: Plan, config_dict: dict[str, Any]) -> str:
    parts = []
    old_files, new_files = dict(old.file_sha256), dict(new.file_sha256)
    files_changed = [k for k in sorted(set(old_files) & set(new_files)) if old_files[k] != new_files[k]]
    for key in files_changed:
        if key == INPUT_CONTAINERS_KEY:
            parts.append(f"input: a tar or Parquet file of it was rewritten, added or removed (their sizes and "
                         f"ETags / mtimes: digest {old_files[key][:12]} then, {new_files[key][:12]} now)")
            continue
        parts.append(f"content of the file {key} names (sha256 {old_files[key][:12]} then, "
                     f"{new_files[key][:12]} now)")
    if old.config_digest != new.config_digest:
        old_cfg = yaml.safe_load(store.read_bytes(layout.CONFIG_YAML) or b"{}") or {}
        changes = config_changes(old_cfg, config_dict)
        if changes or not files_changed:
            shown = "\n  ".join(changes[:20]) if changes else "(config.yaml unreadable; digests differ)"
            parts.append(f"config:\n  {shown}")
    if old.listing_digest != new.listing_digest:
        parts.append(
            f"input listing ({_size(old)} then, {_size(new)} now; "
            f"digest {old.listing_digest[:12]} then, {new.listing_digest[:12]} now)"
        )
    if not parts and old.shard_size != new.shard_size:
        parts.append(f"shard size ({old.shard_size} then, {new.shard_size} now)")
    return "\n".join(parts) or "plan"


def _size(plan: Plan) -> str:
    return f"{plan.num_tars} tar file(s)" if plan.is_tar else f"{plan.num_images} images"
