"""Where every export reads its labels (``bmp_core.output.export.source``): one shard's ``images`` and
``instances`` tables become the shard's exportable images, their people grouped per image, the policy's
verdict and the split. Checked against a plain-Python grouping of the same rows (read with pyarrow's
``to_pylist``), the split rule docs/exports.md states (the SHA-256 of the URI read as a number in
[0, 1), below ``--val-fraction``: val), and the progress bar's own text.

Written for mutation testing of ``bmp_core/output/export/source.py`` (scripts/mutation.sh,
docs/mutation-scores.md). The tables and outputs are hand-built (tests/export_fixtures.py).
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bmp_core.output.export.policy import Decision, ExportPolicy
from bmp_core.output.export.run import ExportOptions, export_output
from bmp_core.output.export.source import export_shard, export_shards, iter_export_shards
from bmp_core.output.reader import load_output
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import ImageRow, images_table
from tests.export_fixtures import Image, Person, box_mask, instances_from_people, write_output

H, W = 48, 64


def _documented_split(uri: str, val_fraction: float) -> str:
    return "val" if int(hashlib.sha256(uri.encode()).hexdigest(), 16) / 2**256 < val_fraction else "train"


def _shard_tables(rng: np.random.Generator) -> tuple[pa.Table, pa.Table, dict[int, list[Person]], set[int]]:
    """A shard whose rows come in no particular order: 9 images (2 failed, with rows all the same), 0 to 3
    people each, some below ``min_pose_score`` 0.5."""
    ids = [40, 41, 42, 43, 44, 45, 46, 47, 48]
    failed = {42, 46}
    people = {i: [Person(box_mask(H, W, 2 + 3 * k, 2, 12 + 3 * k + i % 5, 40),
                         pose_score=0.25 if (i + k) % 3 == 0 else 0.75) for k in range((i * 7) % 4)] for i in ids}
    rows = [ImageRow(i, f"s3://bucket/photos/{i}.jpg", error="decode" if i in failed else None,
                     width=None if i in failed else W + i, height=None if i in failed else H + 2 * i,
                     num_instances=len(people[i])) for i in ids]
    images = images_table(rows, 0)
    instances = instances_from_people(ids, [people[i] for i in ids])
    return (images.take(rng.permutation(images.num_rows)), instances.take(rng.permutation(instances.num_rows)),
            people, failed)


def test_a_shard_in_any_row_order_gives_each_ok_image_its_own_people_in_order() -> None:
    images, instances, people, failed = _shard_tables(np.random.default_rng(3))
    policy = ExportPolicy(min_pose_score=0.5, val_fraction=0.5)
    shard = export_shard(images, instances, policy)

    by_id = {r["image_id"]: r for r in images.to_pylist()}
    ok = sorted(i for i in by_id if i not in failed)
    assert shard.image_ids == ok and shard.num_images == len(ok) and shard.num_failed_images == len(failed)
    assert shard.uris == [by_id[i]["uri"] for i in ok]
    assert shard.widths == [by_id[i]["width"] for i in ok] and shard.heights == [by_id[i]["height"] for i in ok]
    assert shard.splits == [_documented_split(by_id[i]["uri"], 0.5) for i in ok]
    assert set(shard.splits) == {"train", "val"}

    rows = shard.instances.to_pylist()
    assert len(shard.starts) == len(ok) + 1 and shard.starts[-1] == len(rows)
    for k, image_id in enumerate(ok):
        mine = rows[shard.starts[k]:shard.starts[k + 1]]
        order = [(r["image_id"], r["instance_id"]) for r in mine]
        assert order == [(image_id, j) for j in range(len(people[image_id]))]
        # the policy's verdict, row by row: below min_pose_score is an ignore region
        expected = [Decision.IGNORE if p.pose_score < 0.5 else Decision.KEEP for p in people[image_id]]
        assert shard.decisions.decision[shard.starts[k]:shard.starts[k + 1]].tolist() == expected
    assert len(rows) == sum(len(people[i]) for i in ok)  # the failed images' rows are left out
    assert any(len(people[i]) == 0 for i in ok) and any(people[i] for i in failed)


def test_export_shards_is_lazy_and_in_order() -> None:
    first = _shard_tables(np.random.default_rng(1))[:2]
    second = _shard_tables(np.random.default_rng(2))[:2]
    taken = []

    def parts():
        for part in (first, second):
            taken.append(part)
            yield part

    shards = export_shards(parts(), ExportPolicy())
    assert taken == []  # nothing read before the first shard is asked for
    next(shards)
    assert len(taken) == 1
    assert len(list(shards)) == 1 and len(taken) == 2


@pytest.fixture
def tqdm_lock_of_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """tqdm's default lock includes a multiprocessing semaphore that forked processes share, and a bar
    whose display raises leaves it held: under mutmut (one fork per mutant) one such mutant would stall
    every later one. A plain thread lock (and no monitor thread) for the bars of these tests."""
    import tqdm.auto
    import tqdm.std

    for cls in (tqdm.std.tqdm, tqdm.auto.tqdm):  # get_lock() stores the lock on the class it is called on
        monkeypatch.setattr(cls, "_lock", threading.RLock(), raising=False)
        monkeypatch.setattr(cls, "monitor_interval", 0)


@pytest.mark.usefixtures("tqdm_lock_of_this_process")
@pytest.mark.parametrize("fmt", ["coco", "yolo-pose", "label-studio"])
def test_the_progress_bar_counts_every_image_of_the_output(fmt: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    images = [Image(f"/in/{i}.jpg", error="decode") if i == 2 else
              Image(f"/in/{i}.jpg", W, H, people=[Person(box_mask(H, W, 2, 2, 20, 40))]) for i in range(7)]
    out = write_output(str(tmp_path / "out"), images, shard_size=3)
    capsys.readouterr()
    export_output(out, str(tmp_path / "p"), fmt, ExportPolicy(), ExportOptions(progress=True, link="list"))
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    # tqdm's text: "DESC: 100%|...| done/total [elapsed<left, rate UNIT/s]"; failed images count too
    assert re.match(rf"export {fmt}: 100%\|.*\| 7/7 \[.*img/s\]$", bar), bar
    export_output(out, str(tmp_path / "q"), fmt, ExportPolicy(), ExportOptions(progress=False, link="list"))
    assert capsys.readouterr().err == ""


def test_the_committed_shards_in_order_and_no_bar_unless_asked(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    images = [Image(f"/in/{i}.jpg", error="decode") if i in (1, 5) else
              Image(f"/in/{i}.jpg", W, H, people=[Person(box_mask(H, W, 2, 2, 20 + i, 40))] * (i % 3))
              for i in range(8)]
    out = write_output(str(tmp_path / "out"), images, shard_size=3)
    capsys.readouterr()
    shards = list(iter_export_shards(OutputStore(out), ExportPolicy()))  # as the report calls it
    assert capsys.readouterr().err == ""
    job = load_output(out)  # the reader's whole-output view
    assert [i for s in shards for i in s.image_ids] == job.ok_image_ids()
    shard_images = [images[k:k + 3] for k in (0, 3, 6)]
    assert [s.num_failed_images for s in shards] == [sum(im.error is not None for im in s) for s in shard_images]
    assert [s.instances.num_rows for s in shards] == [sum(len(im.people) for im in s if im.error is None)
                                                      for s in shard_images]
