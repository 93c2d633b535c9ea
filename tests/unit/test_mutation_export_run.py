"""``export_output``, the one entry of ``bmp-label export`` (docs/exports.md): the options it
records and checks, what it does to DEST, and which files it writes, read back with the json module,
pycocotools and ``yaml.safe_load`` (Ultralytics' ``data.yaml``). The Python API's defaults are checked
against the CLI's (``bmp-label export --help``), an independent statement of them.

Written for mutation testing of ``bmp_core/output/export/run.py`` (scripts/mutation.sh,
docs/mutation-scores.md). The outputs are hand-built (tests/export_fixtures.py).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import fsspec
import pytest
import yaml
from pycocotools.coco import COCO

from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.run import ExportOptions, ExportUsageError, export_output
from jobs.cli import main
from tests.export_fixtures import Image, Person, box_mask, write_output

H, W = 48, 64
REPO = Path(__file__).resolve().parents[2]


def _output(root: Path, n: int = 3, failed: tuple[int, ...] = ()) -> str:
    images = [Image(f"/data/photos/img_{i:02d}.jpg", error="unreadable image") if i in failed else
              Image(f"/data/photos/img_{i:02d}.jpg", W, H, people=[Person(box_mask(H, W, 2 + i, 2, 20 + i, 40))])
              for i in range(n)]
    return write_output(str(root / "out"), images, shard_size=2)


def _written(dest: Path) -> dict:
    return json.loads((dest / "export.json").read_text())


@pytest.mark.parametrize("fmt", ["coco", "yolo-pose", "yolo-seg", "label-studio"])
def test_the_api_defaults_are_the_cli_defaults_and_export_json_says_what_was_made(
        fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _output(tmp_path)
    assert main(["export", out, "--format", fmt, "--to", str(tmp_path / "cli"), "--no-progress"]) == 0
    capsys.readouterr()
    export_output(out, str(tmp_path / "api"), fmt, ExportPolicy())
    assert capsys.readouterr().err == ""  # no progress bar unless asked for
    api, cli = _written(tmp_path / "api"), _written(tmp_path / "cli")
    assert api["options"] == cli["options"]
    assert api["format"] == fmt and api["source"] == out
    assert api["plan_id"] == json.loads((Path(out) / "plan.json").read_text())["plan_id"]
    assert api["policy_source"] == "options" and cli["policy_source"] == "default:bmp"  # docs/exports.md
    assert api["files"] == cli["files"]


def test_each_format_records_the_options_it_used(tmp_path: Path) -> None:
    out = _output(tmp_path)
    options = ExportOptions(images_per_file=7, review=2, review_by="crowded", link="list", polygon_tolerance_px=0.5,
                            image_url_prefix="/data/local-files/?d=", coco_segmentation="polygon")
    recorded = {}
    for fmt in ("coco", "yolo-seg", "label-studio"):
        export_output(out, str(tmp_path / fmt), fmt, ExportPolicy(), options)
        recorded[fmt] = _written(tmp_path / fmt)["options"]
    assert recorded["coco"] == {"images_per_file": 7, "segmentation": "polygon", "polygon_tolerance_px": 0.5}
    assert recorded["yolo-seg"] == {"link": "list", "polygon_tolerance_px": 0.5, "val_is_train": True}
    assert recorded["label-studio"] == {"review": 2, "review_by": "crowded",
                                        "image_url_prefix": "/data/local-files/?d=", "polygon_tolerance_px": 0.5}
    tasks = json.loads((tmp_path / "label-studio" / "tasks.json").read_text())
    assert len(tasks) == 2 and tasks[0]["data"]["image"].startswith("/data/local-files/?d=/data/photos/")
    # polygon masks: a list of polygons per kept person, as pycocotools reads them
    coco = COCO(str(tmp_path / "coco" / "train.json"))
    assert all(isinstance(a["segmentation"], list) for a in coco.loadAnns(coco.getAnnIds()))
    assert coco.dataset["info"]["source"] == out
    assert coco.dataset["info"]["plan_id"] == _written(tmp_path / "coco")["plan_id"]
    assert coco.dataset["info"]["policy"] == ExportPolicy().to_dict()


def test_yolo_val_is_train_exactly_when_no_image_is_in_val(tmp_path: Path) -> None:
    out = _output(tmp_path, n=12)
    for name, fraction in (("none", 0.0), ("some", 0.5)):
        export_output(out, str(tmp_path / name), "yolo-pose", ExportPolicy(val_fraction=fraction),
                      ExportOptions(link="list"))
        data = yaml.safe_load((tmp_path / name / "data.yaml").read_text())
        has_val = bool((tmp_path / name / "val.txt").read_text().splitlines())
        assert _written(tmp_path / name)["options"]["val_is_train"] is (data["val"] == data["train"]) is not has_val
        assert "kpt_shape" in data  # the pose kind of yolo-pose
    assert has_val  # 0.5 of 12 fixed URIs: some are in val


def test_coco_writes_one_train_json_up_to_images_per_file_images(tmp_path: Path) -> None:
    out = _output(tmp_path, n=4)
    for per_file, names in ((4, ["train.json"]), (3, ["train-00000.json", "train-00001.json"]),
                            (1, [f"train-{k:05d}.json" for k in range(4)])):
        dest = tmp_path / f"per{per_file}"
        export_output(out, str(dest), "coco", ExportPolicy(), ExportOptions(images_per_file=per_file))
        index = json.loads((dest / "index.json").read_text())
        assert [f["file"] for f in index["files"]] == names
        assert sum(len(COCO(str(dest / n)).getImgIds()) for n in names) == 4


def test_each_bad_option_is_one_usage_error_naming_it_and_dest_is_left_as_it_was(tmp_path: Path) -> None:
    out = _output(tmp_path)
    dest = tmp_path / "d"
    export_output(out, str(dest), "coco", ExportPolicy())
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    for fmt, options, message in [
        ("voc", ExportOptions(), "--format must be one of coco, yolo-pose, yolo-seg, label-studio, got 'voc'"),
        ("coco", ExportOptions(images_per_file=0), "--images-per-file must be >= 1, got 0"),
        ("coco", ExportOptions(coco_segmentation="mask"), "--coco-segmentation must be rle or polygon, got 'mask'"),
        ("yolo-pose", ExportOptions(link="hard"), "--link must be symlink, list or auto, got 'hard'"),
        ("yolo-seg", ExportOptions(link="copy"), "--link must be symlink, list or auto, got 'copy'"),
        ("label-studio", ExportOptions(review=0), "--review must be >= 1, got 0"),
        ("label-studio", ExportOptions(review_by="best"),
         "--review-by must be one of low-confidence, crowded, random, got 'best'"),
    ]:
        with pytest.raises(ExportUsageError) as err:
            export_output(out, str(dest), fmt, ExportPolicy(), options)
        assert str(err.value) == message
        # a mistake costs nothing: the previous export is still there, whole
        assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    with pytest.raises(ExportUsageError, match="^--to must not be the output itself"):
        export_output(out, out + "/", "coco", ExportPolicy())


def test_options_of_other_formats_are_not_checked(tmp_path: Path) -> None:
    """Each format checks its own options: a review count or a link mode means nothing to COCO."""
    out = _output(tmp_path)
    odd = {"review": 0, "review_by": "best", "link": "hard", "coco_segmentation": "mask"}
    own = {"coco": {"coco_segmentation": "rle"}, "yolo-pose": {"link": "auto"},
           "label-studio": {"review": 1, "review_by": "random"}}
    for fmt, valid in own.items():
        export_output(out, str(tmp_path / fmt), fmt, ExportPolicy(), ExportOptions(**{**odd, **valid}))
        assert _written(tmp_path / fmt)["format"] == fmt
    assert len(json.loads((tmp_path / "label-studio" / "tasks.json").read_text())) == 1  # --review 1


def test_a_symlink_export_of_remote_images_is_a_usage_error(tmp_path: Path) -> None:
    out = write_output(str(tmp_path / "out"), [Image("s3://bucket/a.jpg", W, H, people=[
        Person(box_mask(H, W, 2, 2, 20, 40))])])
    with pytest.raises(ExportUsageError, match=r"^--link symlink needs local images; s3://bucket/a\.jpg is not$"):
        export_output(out, str(tmp_path / "y"), "yolo-pose", ExportPolicy(), ExportOptions(link="symlink"))


def test_a_symlink_export_of_remote_images_leaves_the_previous_export_in_dest(tmp_path: Path) -> None:
    """The first shard's images are checked before DEST is emptied: a previous export there survives."""
    out = write_output(str(tmp_path / "out"), [Image("s3://bucket/a.jpg", W, H, people=[
        Person(box_mask(H, W, 2, 2, 20, 40))])])
    dest = tmp_path / "y"
    export_output(out, str(dest), "yolo-pose", ExportPolicy(), ExportOptions(link="list"))
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert (dest / "export.json").is_file() and (dest / "data.yaml").is_file()
    for fmt in ("yolo-pose", "yolo-seg"):
        with pytest.raises(ExportUsageError, match=r"^--link symlink needs local images; s3://bucket/a\.jpg is not$"):
            export_output(out, str(dest), fmt, ExportPolicy(), ExportOptions(link="symlink"))
        assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before


def test_a_symlink_export_checks_every_shard_and_takes_an_output_without_images(tmp_path: Path) -> None:
    """The early check sees the first shard; a remote image in a later shard is still refused, naming it,
    and an output without images exports (empty) with symlinks as with a list."""
    person = [Person(box_mask(H, W, 2, 2, 20, 40))]
    out = write_output(str(tmp_path / "mixed"), [Image(str(tmp_path / "a.jpg"), W, H, people=person),
                                                  Image("s3://bucket/b.jpg", W, H, people=person)], shard_size=1)
    with pytest.raises(ExportUsageError, match=r"^--link symlink needs local images; s3://bucket/b\.jpg is not$"):
        export_output(out, str(tmp_path / "y"), "yolo-pose", ExportPolicy(), ExportOptions(link="symlink"))
    empty = write_output(str(tmp_path / "empty"), [])
    for link in ("list", "symlink"):
        export_output(empty, str(tmp_path / link), "yolo-pose", ExportPolicy(), ExportOptions(link=link))
        assert _written(tmp_path / link)["counts"]["images"] == {"train": 0, "val": 0}
    assert (tmp_path / "symlink" / "data.yaml").read_text() == (tmp_path / "list" / "data.yaml").read_text().replace(
        str(tmp_path / "list"), str(tmp_path / "symlink"))


def test_dest_may_be_an_existing_empty_folder_or_one_named_like_the_output(tmp_path: Path) -> None:
    out = _output(tmp_path)
    (tmp_path / "empty").mkdir()
    # outputs in "labels " and "setX" exported to "labels" and "set": other folders
    one = [Image("/in/a.jpg", W, H, people=[Person(box_mask(H, W, 2, 2, 20, 40))])]
    spaced, x = write_output(str(tmp_path / "labels "), one), write_output(str(tmp_path / "setX"), one)
    for src, dest in ((out, tmp_path / "empty"), (out, Path(out + "X")), (out, Path(out + " ")),
                      (spaced, tmp_path / "labels"), (x, tmp_path / "set")):
        export_output(src, str(dest), "coco", ExportPolicy())
        assert sorted(p.name for p in dest.iterdir()) == ["export.json", "index.json", "train.json"]


def test_the_usage_hint_names_a_command_and_a_page_that_exist(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", _output(tmp_path), "--format", "voc", "--to", str(tmp_path / "d"), "--no-progress"]) == 2
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    command = re.match(r"  hint: see '(bmp-label [^']+)' and (docs/[\w-]+\.md)( |$)", hint)
    assert command, hint
    assert (REPO / command.group(2)).is_file()
    with pytest.raises(SystemExit) as exc:
        main(command.group(1).split()[1:])
    assert exc.value.code == 0 and "--format" in capsys.readouterr().out


def test_a_symlink_export_to_a_remote_dest_is_refused_before_it_is_touched(tmp_path: Path) -> None:
    out = _output(tmp_path)
    root = f"/export-{uuid.uuid4().hex[:8]}"  # fsspec's in-memory filesystem: a DEST that is not local
    fs = fsspec.filesystem("memory")
    try:
        export_output(out, f"memory://{root}", "coco", ExportPolicy())
        before = {p: fs.cat(p) for p in fs.find(root)}
        with pytest.raises(ExportUsageError, match="^--link symlink needs a local --to folder$"):
            export_output(out, f"memory://{root}", "yolo-pose", ExportPolicy(), ExportOptions(link="symlink"))
        assert {p: fs.cat(p) for p in fs.find(root)} == before and any(p.endswith("/export.json") for p in before)
    finally:
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_a_folder_holding_no_export_is_refused_with_the_way_out(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(ExportUsageError) as err:
        export_output(_output(tmp_path), str(busy), "coco", ExportPolicy())
    assert str(err.value) == (f"--to {busy} is not empty and holds no export.json: give a new or empty folder "
                              "(a previous export there is replaced)")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
