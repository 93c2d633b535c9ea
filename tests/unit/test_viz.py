"""bmp_core.analysis.viz: what is drawn lands where the labels are and nowhere else; GIFs have a frame per pass."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmp_core.analysis import viz
from bmp_core.coco_meta import SKELETON
from bmp_core.config import LoopConfig
from bmp_core.loop import run_bmp
from bmp_core.output.store import OutputStore
from bmp_core.output.traces import encode_traces, load_traces, write_traces
from bmp_core.records import BmpResult
from bmp_core.testing.fakes import build_fake_models

H, W = 200, 300
BOX = np.array([[50.0, 40.0, 150.0, 180.0]], np.float32)


@pytest.fixture()
def image_rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _person_keypoints() -> np.ndarray:
    """(1, 17, 3): a standing person inside BOX; the left ankle (16) is below threshold."""
    xy = np.array(
        [(100, 55), (95, 52), (105, 52), (90, 55), (110, 55), (80, 75), (120, 75), (70, 100), (130, 100),
         (65, 120), (135, 120), (88, 125), (112, 125), (88, 150), (112, 150), (88, 172), (112, 172)],
        np.float32,
    )
    scores = np.full(17, 0.9, np.float32)
    scores[15] = 0.1
    return np.concatenate([xy, scores[:, None]], axis=1)[None]


def _distance_to_segment(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((px - a[0]) * ab[0] + (py - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.hypot(px - (a[0] + t * ab[0]), py - (a[1] + t * ab[1]))


def test_masks_only_blend_exactly_inside_the_mask(image_rgb: np.ndarray) -> None:
    mask = np.zeros((1, H, W), bool)
    mask[0, 60:170, 70:140] = True
    style = viz.DrawStyle(draw_pose=False, draw_boxes=False, mask_alpha=0.6)
    out = viz.draw_overlay(image_rgb, BOX, _person_keypoints(), mask, style=style)
    color = viz.person_colors_rgb(1)[0].astype(np.float64)
    expected = np.rint(0.4 * image_rgb[mask[0]].astype(np.float64) + 0.6 * color)
    assert np.array_equal(out[mask[0]], expected.astype(np.uint8))
    assert np.array_equal(out[~mask[0]], image_rgb[~mask[0]])


def test_skeleton_drawn_at_keypoints_and_nowhere_far_from_them(image_rgb: np.ndarray) -> None:
    style = viz.DrawStyle(draw_masks=False, draw_boxes=False, keypoint_thr=0.3)
    kpts = _person_keypoints()
    out = viz.draw_overlay(image_rgb, BOX, kpts, style=style)
    color = viz.person_colors_rgb(1)[0]
    visible = kpts[0, :, 2] >= 0.3
    for x, y in kpts[0, visible, :2].astype(int):
        assert np.array_equal(out[y, x], color), (x, y)  # dot centres take the person's colour
    # The invisible ankle is not drawn (no limb reaches it: its only limb goes to the knee, 14).
    ax, ay = kpts[0, 15, :2].astype(int)
    assert np.array_equal(out[ay, ax], image_rgb[ay, ax])
    # Every changed pixel lies within reach of a drawn limb or keypoint.
    ys, xs = np.mgrid[:H, :W].astype(np.float64)
    dist = np.full((H, W), np.inf)
    pts = kpts[0, :, :2].astype(np.float64)
    for a, b in SKELETON:
        if visible[a - 1] and visible[b - 1]:
            dist = np.minimum(dist, _distance_to_segment(xs, ys, pts[a - 1], pts[b - 1]))
    for p in pts[visible]:
        dist = np.minimum(dist, np.hypot(xs - p[0], ys - p[1]))
    reach = style.line_width / 2 + style.keypoint_radius + 1.5
    changed = np.any(out != image_rgb, axis=2)
    assert changed.sum() > 300
    assert not np.any(changed & (dist > reach))


def test_box_and_score_label_stay_on_the_box(image_rgb: np.ndarray) -> None:
    style = viz.DrawStyle(draw_masks=False, draw_pose=False)
    out = viz.draw_overlay(image_rgb, BOX, det_scores=np.array([0.91]), pose_scores=np.array([0.75]), style=style)
    color = viz.person_colors_rgb(1)[0]
    assert np.array_equal(out[110, 50], color) and np.array_equal(out[110, 149], color)  # left/right edges
    assert np.array_equal(out[100:170, 60:140], image_rgb[100:170, 60:140])  # inside, below the label
    changed = np.any(out != image_rgb, axis=2)
    changed[20:181, 50:151] = False  # the outline and the label tab above it
    assert not changed.any()
    assert np.any(out[20:40, 50:100] != image_rgb[20:40, 50:100])  # the label tab


def test_people_get_distinct_colours() -> None:
    colors = viz.person_colors_rgb(len(viz.PALETTE_RGB))
    assert len({tuple(c) for c in colors}) == len(viz.PALETTE_RGB)
    assert np.array_equal(viz.person_colors_rgb(len(viz.PALETTE_RGB) + 1)[-1], colors[0])


def test_no_people_leaves_the_image_unchanged(image_rgb: np.ndarray) -> None:
    out = viz.draw_overlay(image_rgb, np.zeros((0, 4)), np.zeros((0, 17, 3)), np.zeros((0, H, W), bool))
    assert np.array_equal(out, image_rgb)


@pytest.fixture(scope="module")
def traced(image_004806: np.ndarray) -> BmpResult:
    return run_bmp(image_004806, build_fake_models(), LoopConfig(iterations=3), trace=True)


def test_gif_has_one_frame_per_iteration(traced: BmpResult, image_004806: np.ndarray, tmp_path: Path) -> None:
    assert len(traced.traces) == 3
    rgb = np.ascontiguousarray(image_004806[:, :, ::-1])
    frames = viz.iteration_frames(rgb, traced.traces, traced.instances, max_width=800)
    assert len(frames) == 3 and len({f.shape for f in frames}) == 1 and frames[0].shape[1] <= 800
    path = tmp_path / "passes.gif"
    viz.save_gif(frames, path)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        assert gif.info.get("loop") == 0


def test_traces_round_trip_from_one_small_json(traced: BmpResult, image_004806: np.ndarray,
                                              tmp_path: Path) -> None:
    files = encode_traces(traced.traces, image_004806)
    assert set(files) == {"trace.json"}  # every detector input is rebuilt from the original image
    assert len(files["trace.json"]) < 50_000
    store = OutputStore(str(tmp_path))
    write_traces(store, 7, traced.traces, image_004806)
    assert (tmp_path / "traces" / "7" / "trace.json").is_file()  # OUT/traces/<image_id>/trace.json
    back = load_traces(store, 7, image_004806)
    assert back is not None and len(back) == len(traced.traces)
    for a, b in zip(traced.traces, back, strict=True):
        assert a.iteration == b.iteration and a.num_new == b.num_new and a.num_removed_old == b.num_removed_old
        assert np.array_equal(a.detector_input_bgr, b.detector_input_bgr)  # exact
        np.testing.assert_allclose(a.detections.boxes_xyxy, b.detections.boxes_xyxy, atol=0.01)
        np.testing.assert_allclose(a.detections.scores, b.detections.scores, atol=1e-4)
        assert np.array_equal(a.detections.masks, b.detections.masks)
    assert load_traces(store, 8, image_004806) is None


def test_trace_pass_that_cannot_be_rebuilt_is_stored_as_png(traced: BmpResult, image_004806: np.ndarray,
                                                            tmp_path: Path) -> None:
    greyed = traced.traces[1].detector_input_bgr.copy()
    greyed[~greyed.any(axis=2)] = 127  # a loop that greys people out instead of blacking them out
    traces = [traced.traces[0], dataclasses.replace(traced.traces[1], detector_input_bgr=greyed)]
    assert set(encode_traces(traces, image_004806)) == {"trace.json", "pass_1_input.png"}
    store = OutputStore(str(tmp_path))
    write_traces(store, 3, traces, image_004806)
    back = load_traces(store, 3, image_004806)
    assert back is not None and np.array_equal(back[1].detector_input_bgr, greyed)


def test_gif_right_panel_follows_the_policy(traced: BmpResult, image_004806: np.ndarray) -> None:
    """Kept people in colour, ignore regions hatched grey, the rest not drawn, in every pass's frame."""
    rgb = np.ascontiguousarray(image_004806[:, :, ::-1])
    inst = traced.instances
    n = len(inst)
    assert n >= 3
    keep, ignore = np.zeros(n, bool), np.zeros(n, bool)
    keep[0], ignore[1] = True, True  # person 2.. dropped
    style = viz.DrawStyle(draw_boxes=False, draw_pose=False)
    frames = viz.iteration_frames(rgb, traced.traces, inst, style, max_width=10**6, keep=keep, ignore=ignore)
    right = frames[-1][:, rgb.shape[1]:]
    expected = viz.blend_masks(viz.hatch_masks(rgb, inst.masks[1:2]), inst.masks[:1], viz.person_colors_rgb(1), 0.6)
    band = slice(70, None)  # below the title
    assert np.array_equal(right[band], expected[band])
    everyone = viz.iteration_frames(rgb, traced.traces, inst, style, max_width=10**6)[-1][:, rgb.shape[1]:]
    assert not np.array_equal(everyone[band], expected[band])  # without a policy, the others are drawn


def test_occluded_keypoints_are_drawn_hollow(image_rgb: np.ndarray) -> None:
    # One drawn keypoint (no limb: its neighbours are below threshold), visible or occluded.
    kpts = _person_keypoints()
    kpts[0, 1:, 2] = 0.1
    style = viz.DrawStyle(draw_masks=False, draw_boxes=False, keypoint_radius=4)
    x, y = kpts[0, 0, :2].astype(int)
    color = viz.person_colors_rgb(1)[0]
    solid = viz.draw_overlay(image_rgb, BOX, kpts, style=style, keypoint_visibility=np.full((1, 17), 0.9))
    hollow = viz.draw_overlay(image_rgb, BOX, kpts, style=style, keypoint_visibility=np.full((1, 17), 0.2))
    unknown = viz.draw_overlay(image_rgb, BOX, kpts, style=style, keypoint_visibility=np.full((1, 17), np.nan))
    assert np.array_equal(solid[y, x], color) and np.array_equal(unknown, solid)
    assert np.array_equal(hollow[y, x], image_rgb[y, x])  # the centre of a ring is left as it was
    ring = np.any(hollow != image_rgb, axis=2)
    ys, xs = np.nonzero(ring)
    assert len(ys) > 8 and np.all(np.hypot(xs - x, ys - y) <= 4 * 1.5 + 1)
    assert np.array_equal(viz.draw_overlay(image_rgb, BOX, kpts, style=style), solid)  # no visibility: solid
