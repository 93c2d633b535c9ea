"""A COCO export that fails half-way, and the errors of the COCO writer's public functions.

Written for mutation testing of ``bmp_core/output/export/coco.py`` (docs/development.md "Mutation testing"):
an export that fails (a source part gone, the disk full as a file's images are written) leaves no half file
in DEST when ``export_output`` raises, only the files it had finished (read back with pycocotools); the
functions' own checks name the bad value. Hand-built outputs (tests/export_fixtures.py), a local DEST.
"""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from bmp_core.output.export.coco import ShardAnnotations, write_coco_export
from bmp_core.output.export.manifest import ExportTally
from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.run import ExportOptions, export_output
from bmp_core.output.export.source import iter_export_shards
from bmp_core.output.store import OutputStore
from tests.export_fixtures import Image, Person, box_mask, write_output


def _people_output(root: Path, num_images: int) -> str:
    images = [Image(f"/photos/p{i}.jpg", 64, 48, people=[Person(box_mask(48, 64, 2, 2, 30, 40))])
              for i in range(num_images)]
    return write_output(str(root), images, shard_size=2)


def test_a_source_part_gone_half_way_leaves_the_finished_files_only(tmp_path: Path) -> None:
    src = _people_output(tmp_path / "src", 6)
    (part,) = (tmp_path / "src" / "instances").glob("shard-000002-*.parquet")
    part.unlink()
    dest = tmp_path / "coco"
    # 3 images a file, all train: train-00000.json is full after the second shard's first image,
    # train-00001.json holds one image when the third shard cannot be read.
    with pytest.raises(FileNotFoundError, match="shard-000002") as failed:
        export_output(src, str(dest), "coco", ExportPolicy(val_fraction=0.0), ExportOptions(images_per_file=3))
    # What a caller finds while it handles the error (the exception still alive): no staging file.
    assert sorted(os.listdir(dest)) == ["train-00000.json"], failed.value
    assert len(COCO(str(dest / "train-00000.json")).getImgIds()) == 3


def test_the_disk_full_as_a_files_images_are_written_leaves_no_half_file(tmp_path: Path) -> None:
    """A file's images go out last, in one write (its largest): the disk filling up then (here: a file size
    limit, which the kernel enforces like a full disk, EFBIG) fails the export and leaves DEST empty."""
    images = [Image(f"/photos/an-image-with-a-long-name-{i:04d}.jpg", 64, 48) for i in range(300)]
    src = write_output(str(tmp_path / "src"), images, shard_size=300)
    dest = tmp_path / "coco"
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    # The head and the (no) annotations fit in the write buffer; the images array (~20 KB) does not.
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, previous_limit[1]))
    try:
        with pytest.raises(OSError) as failed:
            export_output(src, str(dest), "coco", ExportPolicy(val_fraction=0.0))
        listed = sorted(os.listdir(dest))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert "too large" in str(failed.value).lower()
    assert listed == [], failed.value


def test_the_writers_own_checks_name_the_bad_value(tmp_path: Path) -> None:
    """The CLI refuses these first; a Python caller of the writer gets the same facts from it."""
    src = _people_output(tmp_path / "src", 2)
    (shard,) = iter_export_shards(OutputStore(src), ExportPolicy())
    with pytest.raises(ValueError, match=r"segmentation must be rle or polygon, got 'mask'"):
        ShardAnnotations(shard, 0.3, segmentation="mask")
    with pytest.raises(ValueError, match=r"images_per_file must be >= 1, got 0"):
        write_coco_export([shard], OutputStore(str(tmp_path / "coco")), 0.3, images_per_file=0, single=False,
                          tally=ExportTally())
    assert not (tmp_path / "coco").exists()
