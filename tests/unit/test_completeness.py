"""Is a finished output really complete? Commit markers, garbage collection and the end of a job, on a local
folder, checked with independent readers (json, pyarrow.parquet, csv, pycocotools).

Written for mutation testing of ``bmp_core/output/commits.py`` and ``jobs/finalize.py``
(docs/development.md "Mutation testing"); every check goes through the public functions.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bmp_core.config import BmpConfig
from bmp_core.io.tars import TAR_ID_STRIDE
from bmp_core.output.commits import ShardCommit, commit_shard, committed_markers, garbage_collect
from bmp_core.output.plan import Plan, freeze_plan
from bmp_core.output.store import OutputStateError, OutputStore
from bmp_core.output.tables import INSTANCES_SCHEMA, TABLE_SCHEMAS, ImageRow, images_table
from jobs.finalize import FinalCounts, check_complete, errors_csv, finalize_output
from jobs.planner import listing_table, make_plan


def _images(ids: list[int], errors: dict[int, str] | None = None, shard_id: int = 0) -> pa.Table:
    errors = errors or {}
    return images_table(
        [ImageRow(i, f"/in/{i}.jpg", error=errors.get(i), width=4, height=3) for i in ids], shard_id=shard_id
    )


def test_a_marker_is_json_naming_parts_that_hold_its_rows(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    before = time.time()
    marker = commit_shard(store, "plan-1", 7, "a2-abc", _images([1, 2, 3], shard_id=7),
                          INSTANCES_SCHEMA.empty_table(), seconds=1.5, num_errors=0, worker="host:12")
    after = time.time()
    written = json.loads((tmp_path / "_commits" / "shard-000007.json").read_text())
    assert {k: written[k] for k in ("plan_id", "shard_id", "attempt_id", "num_images", "num_instances",
                                    "seconds", "num_errors", "worker")} == {
        "plan_id": "plan-1", "shard_id": 7, "attempt_id": "a2-abc", "num_images": 3, "num_instances": 0,
        "seconds": 1.5, "num_errors": 0, "worker": "host:12"}
    assert before <= written["committed_unix"] <= after
    for kind, rows in (("images", 3), ("instances", 0)):
        part = tmp_path / written["parts"][kind]
        assert part.parent.name == kind and "a2-abc" in part.name
        assert pq.read_table(part).num_rows == rows
        assert pq.read_schema(part).remove_metadata().equals(TABLE_SCHEMAS[kind].remove_metadata())
    # What a reader of the output gets back is the marker that was written.
    assert committed_markers(store, "plan-1") == {7: marker}
    assert ShardCommit.from_json(marker.to_json()) == marker
    assert marker.part("images") == written["parts"]["images"]
    assert marker.part("instances") == written["parts"]["instances"]


def test_committed_markers_reads_only_this_plans_markers_sorted(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                                ) -> None:
    store = OutputStore(str(tmp_path))
    empty = INSTANCES_SCHEMA.empty_table()
    for shard in (3, 5, 2):
        commit_shard(store, "p", shard, "a1-x", _images([shard]), empty)
    commit_shard(store, "other", 1, "a1-x", _images([1]), empty)
    (tmp_path / "_commits" / "notes.txt").write_text("not a marker")
    # Unreadable markers sort first and in between: each is skipped, the rest still read.
    (tmp_path / "_commits" / "shard-000000.json").write_text("[1, 2]")
    (tmp_path / "_commits" / "shard-000004.json").write_text(json.dumps({"plan_id": "p", "shard_id": 4}))
    with caplog.at_level(logging.WARNING, logger="bmp_core.output.commits"):
        markers = committed_markers(store, "p")
    assert list(markers) == [2, 3, 5]
    assert all(m.plan_id == "p" and m.shard_id == s for s, m in markers.items())
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all(w.startswith("ignoring unreadable commit marker _commits/shard-00000")
                                    for w in warned)
    assert warned[1].endswith("shard-000004.json: 'attempt_id'")  # the reason: the first missing field


def test_a_marker_without_optional_fields_still_reads(tmp_path: Path) -> None:
    minimal = {"plan_id": "p", "shard_id": "2", "attempt_id": "a1", "num_images": "4", "num_instances": 0,
               "parts": {"images": "images/x.parquet", "instances": "instances/y.parquet"}}
    marker = ShardCommit.from_json(json.dumps(minimal).encode())
    assert (marker.shard_id, marker.num_images, marker.committed_unix) == (2, 4, 0.0)
    assert (marker.seconds, marker.num_errors, marker.worker) == (None, None, None)


def test_garbage_collect_removes_exactly_the_unnamed_parts(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    empty = INSTANCES_SCHEMA.empty_table()
    first = commit_shard(store, "p", 0, "a1-x", _images([0, 1]), empty)
    commit_shard(store, "p", 1, "a0-old", _images([2]), empty)
    last = commit_shard(store, "p", 1, "a1-y", _images([2]), empty)  # the last marker wins
    kept = [first, last]
    store.write_table("instances/shard-000009-a1-crash.parquet", empty)
    assert garbage_collect(store, "p") == 3  # a0-old's two parts and the crashed one
    remaining = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("*/*.parquet"))
    assert remaining == sorted(m.part(k) for m in kept for k in ("images", "instances"))
    assert garbage_collect(store, "p") == 0


def test_errors_csv_lists_the_failed_images_by_id() -> None:
    table = _images([5, 2, 9, 1], errors={9: 'bad, "quoted"\nline', 2: "decode"})
    rows = list(csv.reader(io.StringIO(errors_csv(table).decode())))
    assert rows == [["image_id", "uri", "error"], ["2", "/in/2.jpg", "decode"],
                    ["9", "/in/9.jpg", 'bad, "quoted"\nline']]


def _listed_output(tmp_path: Path, n: int) -> tuple[OutputStore, Plan]:
    store = OutputStore(str(tmp_path))
    cfg = BmpConfig()
    uris = pa.array([f"/in/{i}.jpg" for i in range(n)])
    plan = make_plan(cfg, uris)
    freeze_plan(store, plan, listing_table(uris), cfg)
    return store, plan


def test_finalize_writes_errors_and_coco_and_counts_them(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    store, plan = _listed_output(tmp_path, 5)
    assert plan.num_shards == 1
    commit_shard(store, plan.plan_id, 0, "a1-x", _images([0, 1, 2, 3, 4], errors={3: "decode"}),
                 INSTANCES_SCHEMA.empty_table())
    commit_shard(store, plan.plan_id, 0, "a0-dup", _images([0, 1, 2, 3, 4]), INSTANCES_SCHEMA.empty_table())
    commit_shard(store, plan.plan_id, 0, "a2-y", _images([0, 1, 2, 3, 4], errors={3: "decode"}),
                 INSTANCES_SCHEMA.empty_table())
    counts = finalize_output(store, plan, keypoint_thr=0.3)
    assert counts == FinalCounts(images=5, images_ok=4, images_error=1, instances=0, coco_images=4,
                                 coco_annotations=0, orphan_parts_removed=4)
    rows = list(csv.reader(io.StringIO((tmp_path / "errors.csv").read_text())))
    assert rows == [["image_id", "uri", "error"], ["3", "/in/3.jpg", "decode"]]
    coco = COCO(str(tmp_path / "coco.json"))
    # The failed image is in errors.csv, not in coco.json.
    assert sorted(img["file_name"] for img in coco.loadImgs(coco.getImgIds())) == [
        f"/in/{i}.jpg" for i in (0, 1, 2, 4)
    ]


def test_finalize_refuses_an_output_missing_an_image(tmp_path: Path) -> None:
    store, plan = _listed_output(tmp_path, 3)
    commit_shard(store, plan.plan_id, 0, "a1-x", _images([0, 2]), INSTANCES_SCHEMA.empty_table())
    with pytest.raises(OutputStateError, match=r"images table has 2 rows for 3 images \(0 duplicated ids\)"):
        finalize_output(store, plan, keypoint_thr=0.3)
    assert not (tmp_path / "coco.json").exists()


@pytest.mark.parametrize(
    ("ids", "dups"), [([0, 1, 1], 1), ([0, 1, 2, 3], 0), ([1, 2, 3], 0), ([0, 0, 1, 1, 2], 2)]
)
def test_check_complete_wants_each_listed_image_exactly_once(ids: list[int], dups: int) -> None:
    plan = Plan(3, 2, "l" * 64, "c" * 64)
    with pytest.raises(OutputStateError, match=rf"images table has {len(ids)} rows for 3 images \({dups} dupl"):
        check_complete(plan, pa.table({"image_id": pa.array(ids, pa.int64())}))
    check_complete(plan, pa.table({"image_id": pa.array([2, 0, 1], pa.int64())}))  # any order


def test_check_complete_of_an_empty_listing() -> None:
    check_complete(Plan(0, 2, "l" * 64, "c" * 64), pa.table({"image_id": pa.array([], pa.int64())}))


def test_check_complete_of_tars_counts_each_tars_images() -> None:
    plan = Plan(None, 256, "l" * 64, "c" * 64, num_tars=2)

    def marker(shard: int, n: int) -> ShardCommit:
        return ShardCommit(plan.plan_id, shard, "a1", "i", "j", n, 0, 0.0)

    markers = {0: marker(0, 2), 1: marker(1, 2)}
    good = [0, 1, TAR_ID_STRIDE, TAR_ID_STRIDE + 1]
    check_complete(plan, pa.table({"image_id": pa.array(good[::-1], pa.int64())}), markers)
    # One image of the second tar shifted to the first tar's range: same count, wrong ids.
    with pytest.raises(OutputStateError, match=r"4 rows for 4 images counted in 2 tars \(0 duplicated"):
        check_complete(plan, pa.table({"image_id": pa.array([0, 1, 2, TAR_ID_STRIDE], pa.int64())}), markers)
    with pytest.raises(OutputStateError, match=r"^2 of the 2 tars have no committed shard \(e.g. shard 0\)$"):
        check_complete(plan, pa.table({"image_id": pa.array(good, pa.int64())}))
    with pytest.raises(OutputStateError, match=r"^1 of the 2 tars have no committed shard \(e.g. shard 1\)$"):
        check_complete(plan, pa.table({"image_id": pa.array(good, pa.int64())}), {0: markers[0]})


def test_finalize_counts_the_people_and_coco_json_names_its_source(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    from bmp_core.output.plan import load_plan
    from tests.export_fixtures import Image, Person, box_mask, write_output

    people = [Person(box_mask(48, 64, 2, 3, 20, 30)), Person(box_mask(48, 64, 30, 5, 60, 40))]
    images = [Image("/in/a.jpg", people=people), Image("/in/b.jpg", error="decode"),
              Image("/in/c.jpg", people=people[:1])]
    uri = write_output(str(tmp_path / "out"), images, shard_size=2)
    store = OutputStore(uri)
    plan = load_plan(store)
    counts = finalize_output(store, plan, keypoint_thr=0.3)
    assert counts == FinalCounts(images=3, images_ok=2, images_error=1, instances=3, coco_images=2,
                                 coco_annotations=3, orphan_parts_removed=0)
    coco = COCO(str(tmp_path / "out" / "coco.json"))
    by_name = {img["file_name"]: len(coco.getAnnIds(imgIds=[img["id"]])) for img in coco.loadImgs(coco.getImgIds())}
    assert by_name == {"/in/a.jpg": 2, "/in/c.jpg": 1}
    info = json.loads((tmp_path / "out" / "coco.json").read_text())["info"]
    assert info["source"] == store.uri and info["plan_id"] == plan.plan_id


def test_finalize_logs_how_many_orphan_parts_it_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, plan = _listed_output(tmp_path, 2)
    commit_shard(store, plan.plan_id, 0, "a0-old", _images([0, 1]), INSTANCES_SCHEMA.empty_table())
    commit_shard(store, plan.plan_id, 0, "a1-new", _images([0, 1]), INSTANCES_SCHEMA.empty_table())
    with caplog.at_level(logging.INFO, logger="jobs.finalize"):
        assert finalize_output(store, plan, keypoint_thr=0.3).orphan_parts_removed == 2
    assert "removed 2 part(s) of failed or duplicate attempts" in [r.getMessage() for r in caplog.records]
