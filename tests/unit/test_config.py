from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bmp_core.config import BmpConfig, ConfigError, config_from_dict, dump_config, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load_and_round_trip(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_d3_holds_the_published_thresholds() -> None:
    cfg = load_config(CONFIGS / "bmp_d3.yaml")
    loop = cfg.loop
    assert loop.iterations == 2
    assert (loop.detect.person_label, loop.detect.score_thr, loop.detect.nms_iou_thr) == (0, 0.3, 0.3)
    assert (loop.pose_nms.oks_thr, loop.pose_nms.keypoint_thr) == (0.8, 0.3)
    p = loop.prompt
    assert (p.num_pos_keypoints, p.confidence_thr, p.visibility_thr, p.selection_method) == (
        6, 0.3, 0.3, "distance+confidence")
    assert loop.masks.exclusive and loop.masks.mask_out_dilate_px == 0
    d = cfg.models.detector
    assert (d.score_thr, d.nms_iou_thr, d.max_per_img) == (0.05, 0.6, 40)
    assert cfg.models.pose.mask_alpha == 0.2 and cfg.models.segmenter.image_size == 1024
    assert cfg.models.detector.checkpoint.endswith("rtmdet-ins-l-mask.pth")


def test_unknown_key_is_an_error_naming_the_dotted_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("loop:\n  prompt:\n    num_pos_keypoint: 4\n")
    with pytest.raises(ConfigError, match=r"unknown config key loop\.prompt\.num_pos_keypoint"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown config key modles"):
        config_from_dict({"modles": {}})


def test_overrides_parse_yaml_values_and_reject_bad_ones() -> None:
    cfg = config_from_dict({}, ["loop.iterations=3", "loop.prompt.selection_method=confidence",
                                "models.detector.checkpoint=s3://b/w.pth", "loop.masks.exclusive=false"])
    assert cfg.loop.iterations == 3 and cfg.loop.prompt.selection_method == "confidence"
    assert cfg.models.detector.checkpoint == "s3://b/w.pth" and cfg.loop.masks.exclusive is False
    assert config_from_dict({}, ["loop.detect.score_thr=1"]).loop.detect.score_thr == 1.0  # int -> float
    with pytest.raises(ConfigError, match=r"loop\.iterations: expected an integer"):
        config_from_dict({}, ["loop.iterations=two"])
    with pytest.raises(ConfigError, match="key.path=value"):
        config_from_dict({}, ["loop.iterations"])
    with pytest.raises(ConfigError, match=r"unknown config key loop\.nope"):
        config_from_dict({}, ["loop.nope=1"])
    with pytest.raises(ConfigError, match=r"loop\.iterations: expected an integer"):
        config_from_dict({}, ["loop.iterations.x=1"])
    with pytest.raises(ConfigError, match="not a section"):
        config_from_dict({"loop": {"iterations": 2}}, ["loop.iterations.x=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("loop.iterations=0", "loop.iterations must be >= 1"),
        ("loop.pose_nms.oks_thr=1.5", r"loop\.pose_nms\.oks_thr must be in \[0, 1\]"),
        ("loop.prompt.selection_method=random", "selection_method"),
        ("models.kind=yolo", "models.kind"),
        ("loop.masks.exclusive=3", "expected true/false"),
        ("job.shard_size=0", "job.shard_size"),
        ("job.mask_pool_mb=-1", r"job\.mask_pool_mb must be >= 0"),
    ],
)
def test_invalid_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, [override])


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == BmpConfig()


def test_configs_are_frozen() -> None:
    cfg = BmpConfig()
    with pytest.raises(AttributeError):
        cfg.loop.iterations = 5  # type: ignore[misc]


def test_models_device_is_validated() -> None:
    from bmp_core.config import ConfigError, config_from_dict

    for ok in ("auto", "cpu", "cuda", "cuda:0", "cuda:3"):
        assert config_from_dict({"models": {"device": ok}}).models.device == ok
    for bad in ("gpu", "cuda:", "cuda:one", "CUDA"):
        with pytest.raises(ConfigError, match="models.device"):
            config_from_dict({"models": {"device": bad}})


def test_ray_gpu_workers_refuse_a_device_they_cannot_have() -> None:
    from bmp_core.config import config_from_dict
    from jobs.ray_runner import JobError, check_device_for_workers

    def cfg(device: str, kind: str = "bmp") -> object:
        return config_from_dict({"models": {"kind": kind, "device": device}})

    with pytest.raises(JobError, match="each worker sees only the GPU it was given, as cuda:0"):
        check_device_for_workers(cfg("cuda:1"), use_gpu=True)
    with pytest.raises(JobError, match="has no GPU"):
        check_device_for_workers(cfg("cuda"), use_gpu=False)
    for device, use_gpu in (("auto", True), ("auto", False), ("cuda", True), ("cuda:0", True),
                            ("cpu", False)):
        check_device_for_workers(cfg(device), use_gpu)
    check_device_for_workers(cfg("cuda:1", kind="fake"), use_gpu=True)  # fakes never touch the device


def test_the_v2_configs_models_sections() -> None:
    """The models half of bmp_v2.yaml / tiny_random_v2.yaml (their loop half needs the v2 loop options)."""
    v2 = config_from_dict({"models": yaml.safe_load((CONFIGS / "bmp_v2.yaml").read_text())["models"]}).models
    assert (v2.pose.config, v2.pose.num_keypoints, v2.pose.mask_alpha) == ("pmpose-b", 23, 0.25)
    assert v2.pose.checkpoint.endswith("/resolve/main/PMPose/PMPose-b-1.0.0.pth")
    assert v2.segmenter.checkpoint.endswith("/resolve/main/SAM-pose2seg_hiera_b%2B.pt")
    assert v2.segmenter.config == "configs/sam2.1/sam2.1_hiera_b+.yaml" and v2.segmenter.dynamic_multimask_via_stability
    assert v2.detector == load_config(CONFIGS / "bmp_d3.yaml").models.detector
    tiny = yaml.safe_load((CONFIGS / "tiny_random_v2.yaml").read_text())["models"]
    pose = config_from_dict({"models": tiny}).models.pose
    assert (pose.config, pose.num_keypoints, pose.checkpoint) == ("pmpose-s", 23, None)


@pytest.mark.parametrize("arch", ["pmpose-s", "pmpose-h", "maskpose-b-1.1"])
def test_the_v2_pose_family_needs_23_channels(arch: str) -> None:
    with pytest.raises(ConfigError, match="num_keypoints: 23"):
        config_from_dict({"models": {"pose": {"config": arch}}})
    assert config_from_dict({"models": {"pose": {"config": arch, "num_keypoints": 23}}}).models.pose.config == arch
