"""Shards, digests and the frozen listing (pure functions; no Ray, no storage)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from bmp_core.config import BmpConfig, config_from_dict
from bmp_core.io.uris import read_list_file, sort_unique
from bmp_core.output.plan import Plan, config_changes
from jobs.planner import (
    config_digest,
    listing_digest,
    listing_table,
    make_plan,
    shard_uris,
)


@pytest.mark.parametrize(("num_images", "shard_size"), [(0, 3), (1, 256), (10, 3), (12, 3), (1000, 256)])
def test_shards_partition_the_ids(num_images: int, shard_size: int) -> None:
    plan = Plan(num_images, shard_size, "l", "c")
    ids = [i for s in range(plan.num_shards) for i in range(*plan.shard_range(s))]
    assert ids == list(range(num_images))
    assert all(0 < np.subtract(*plan.shard_range(s)[::-1]) <= shard_size for s in range(plan.num_shards))
    with pytest.raises(IndexError):
        plan.shard_range(plan.num_shards)


def test_listing_digest_is_sha256_of_lines() -> None:
    uris = ["/a/x.jpg", "s3://b/ü.jpg", "/a/y.jpg"]
    expected = hashlib.sha256("".join(u + "\n" for u in uris).encode()).hexdigest()
    assert listing_digest(pa.array(uris)) == expected
    # Sliced arrays (non-zero offset) hash their own rows only.
    assert listing_digest(pa.array(["zzz"] + uris).slice(1)) == expected
    assert listing_digest(pa.array([], pa.string())) == hashlib.sha256(b"").hexdigest()


def test_config_digest_ignores_speed_knobs_only() -> None:
    base = config_digest(BmpConfig())
    assert config_digest(config_from_dict({}, ["job.queue_depth=5", "job.decode_threads=1",
                                               "job.max_attempts=9", "job.batch_size=2"])) == base
    assert config_digest(config_from_dict({}, ["loop.iterations=3"])) != base
    assert config_digest(config_from_dict({}, ["job.shard_size=7"])) != base


def test_config_changes_names_the_keys() -> None:
    assert config_changes({"loop": {"iterations": 2, "x": 1}}, {"loop": {"iterations": 3, "x": 1}}) == [
        "loop.iterations: 2 -> 3"
    ]


def test_large_list_file_matches_python(tmp_path: object) -> None:
    rng = np.random.default_rng(0)
    names = [f"s3://bucket/{rng.integers(0, 10**9):09d}/img_{i}.jpg" for i in range(50_000)]
    names += names[:100]  # duplicates
    data = ("\n".join(names) + "\n").encode()
    uris = sort_unique(read_list_file(data, "/base"))
    expected = sorted(set(names))
    assert uris.to_pylist() == expected
    plan = make_plan(BmpConfig(), uris)
    assert plan.num_images == len(expected) and plan.num_shards == -(-len(expected) // 256)
    assert shard_uris(uris, plan, 3) == expected[3 * 256: 4 * 256]
    table = listing_table(uris)
    assert table.column("image_id").to_pylist()[:3] == [0, 1, 2]


def test_config_digest_of_an_output_from_before_the_v2_keys_is_unchanged() -> None:
    # What a bmp-label without loop.pose_nms.remove_losing_old / models.fake.visibility digested: the same
    # canonical JSON of the result-affecting sections, without those keys.
    import json

    from bmp_core.config import config_to_dict
    from jobs.planner import OPTIONAL_RESULT_JOB_KEYS, RESULT_JOB_KEYS

    for kind in ("bmp", "fake"):
        cfg = config_from_dict({}, [f"models.kind={kind}"])
        data = config_to_dict(cfg)
        del data["loop"]["pose_nms"]["remove_losing_old"], data["models"]["fake"]["visibility"]
        del data["models"]["stage_uri"]  # added later too, and never a result key
        for key in ("detect_people", "detector_windows", "detector_overlap", "detector_score_thr",
                    "detector_merge_dist", "detector_duplicate_overlap"):  # the lite detector's, added later
            del data["models"]["lite"][key]
        old = {"models": data["models"], "loop": data["loop"],
               "job": {k: data["job"][k] for k in RESULT_JOB_KEYS
                       if k not in OPTIONAL_RESULT_JOB_KEYS or data["job"][k] is not None}}
        canonical = json.dumps(old, sort_keys=True, separators=(",", ":"))
        assert config_digest(cfg) == hashlib.sha256(canonical.encode()).hexdigest()
        for override in ("loop.pose_nms.remove_losing_old=true", "models.fake.visibility=true"):
            assert config_digest(config_from_dict({}, [f"models.kind={kind}", override])) != config_digest(cfg)
        # where checkpoints are staged, and the lite detector's settings of another backend, change nothing
        for override in ("models.stage_uri=s3://b/weights", "models.lite.detector_overlap=0.25"):
            assert config_digest(config_from_dict({}, [f"models.kind={kind}", override])) == config_digest(cfg)


def test_the_lite_detector_settings_are_in_the_digest_only_when_it_runs() -> None:
    detect = config_from_dict({}, ["models.kind=lite", "loop.iterations=2"])
    given = config_from_dict({}, ["models.kind=lite", "models.lite.detect_people=false", "loop.iterations=1",
                                  "job.given_boxes=x.json"])
    assert config_digest(config_from_dict({}, ["models.kind=lite", "loop.iterations=2",
                                               "models.lite.detector_overlap=0.25"])) != config_digest(detect)
    assert config_digest(config_from_dict({}, ["models.kind=lite", "models.lite.detect_people=false",
                                               "loop.iterations=1", "job.given_boxes=x.json",
                                               "models.lite.detector_overlap=0.25"])) == config_digest(given)


def test_the_mask_pool_size_does_not_change_the_plan() -> None:
    """job.mask_pool_mb only changes how fast a worker runs: an output resumes under another value."""
    assert config_digest(config_from_dict({}, ["job.mask_pool_mb=0"])) == config_digest(config_from_dict({}, []))
