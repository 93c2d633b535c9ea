"""BMP v2's extra pose cost per image: PMPose (ProbPose head) next to v1's ViTPose/MaskPose head, on CPU.

Usage:
    python benchmarks/bench_pose_v2.py               # ViT-s trunks (vitpose-s vs pmpose-s), 8 people
    python benchmarks/bench_pose_v2.py --size b      # the published size (MaskPose-b vs PMPose-b)
    python benchmarks/bench_pose_v2.py --repeat 7 --device cuda

Both models have random weights (seeded) and the same ViT trunk; v1 is the 21-channel heatmap head
(``MaskPoseEstimator``, DARK with ``inv``), v2 the 23-channel ProbPose head (sparsemax heatmaps + presence,
visibility and OKS branches on the backbone map, flip-averaged; DARK with ``pinv``). The input is
tests/models/adapter_stages.py's COCO-size case (``examples/images/000000000785.jpg``, 8 synthetic people with masks).

Rows (ms per image, min and median over ``--repeat`` runs, v1 and v2 interleaved run by run, one warm-up
each), and v2/v1:

- ``estimate``: the whole port call (crops, network with the flip test, decoding),
- ``network``: the crops through trunk + head with the flip test (``heatmaps`` vs ``crop_poses``),
- ``head``: the head alone on the same trunk features (2 x people crops: plain + mirrored),
- ``decode``: UDP + DARK of the 17 COCO channels (v1's ``inv`` vs v2's ``pinv``) on the models' own heatmaps.

The load average is printed before and after: compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.models import adapter_stages  # noqa: E402  (the cases and stack check live with the parity tests)


def build_pair(size: str, device: str) -> tuple[Any, Any]:
    """(v1, v2) estimators with random weights: ``vitpose-s``/``maskpose-b`` (21 ch) and ``pmpose-{size}``."""
    import torch

    from bmp_core.config import PoseModelConfig
    from bmp_core.models.pose_maskpose import build_maskpose
    from bmp_core.models.pose_pmpose import build_pose_v2

    v1_arch = "maskpose-b" if size == "b" else f"vitpose-{size}"
    torch.manual_seed(0)
    v1 = build_maskpose(PoseModelConfig(config=v1_arch), torch.device(device), None, "fp32")
    torch.manual_seed(0)
    v2_cfg = PoseModelConfig(config=f"pmpose-{size}", num_keypoints=23, mask_alpha=0.25)
    v2 = build_pose_v2(v2_cfg, torch.device(device), None, "fp32")
    return v1, v2


def interleaved(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, list[float]]:
    """Seconds of each function per run, the functions called in turn within each run (one warm-up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def measure(size: str, device: str, repeat: int, people: int) -> list[tuple[str, list[float], list[float]]]:
    import torch

    v1, v2 = build_pair(size, device)
    case = adapter_stages.small_case()
    boxes, masks = case.boxes[:people], case.masks[:people]
    crops1, centers, scales = v1.prepare_crops(case.image, boxes, masks)
    crops2, _, _ = v2.prepare_crops(case.image, boxes, masks)
    x = torch.cat([torch.zeros(len(crops1), 3, 256, 192), torch.ones(len(crops1), 3, 256, 192)]).to(device)
    with torch.inference_mode():
        feats1, feats2 = v1.model.extract_feat(x), v2.model.extract_feat(x)
    heatmaps1 = v1.heatmaps(crops1)[:, :17]
    heatmaps2 = v2.crop_poses(crops2).heatmaps[:, :17]

    def head(model: Any, feats: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                out = model.head.forward(tuple(f.float() for f in feats))
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()  # the other rows end on the host; this one must wait for the GPU
            return out

        return run

    rows = {
        "estimate": ((lambda: v1.estimate([case.image], [boxes], [masks])),
                     (lambda: v2.estimate([case.image], [boxes], [masks]))),
        "network": ((lambda: v1.heatmaps(crops1)), (lambda: v2.crop_poses(crops2))),
        "head": (head(v1.model, feats1), head(v2.model, feats2)),
        "decode": ((lambda: v1.decode(heatmaps1, centers, scales)), (lambda: v2.decode(heatmaps2, centers, scales))),
    }
    out = []
    for name, (first, second) in rows.items():
        times = interleaved({"v1": first, "v2": second}, repeat)
        out.append((name, times["v1"], times["v2"]))
    return out


def summary(rows: list[tuple[str, list[float], list[float]]]) -> str:
    """One line: per stage, v2/v1 of the minima and the two minima in ms."""
    return "; ".join(
        f"{name} v2/v1 {min(t2) / min(t1):.2f} ({min(t1) * 1000:.1f} -> {min(t2) * 1000:.1f} ms)"
        for name, t1, t2 in rows
    )


def format_rows(rows: list[tuple[str, list[float], list[float]]], size: str, people: int) -> str:
    v1_name = "maskpose-b" if size == "b" else f"vitpose-{size}"
    lines = [
        f"pose per image ({people} people, flip test): v1 = {v1_name} (21 ch), v2 = pmpose-{size} (23 ch)",
        f"{'stage':<10} {'v1 min ms':>10} {'v1 med ms':>10} {'v2 min ms':>10} {'v2 med ms':>10} {'v2/v1 min':>10}"
        f" {'v2/v1 med':>10}",
    ]
    for name, t1, t2 in rows:
        m1, m2 = min(t1) * 1000, min(t2) * 1000
        d1, d2 = statistics.median(t1) * 1000, statistics.median(t2) * 1000
        lines.append(f"{name:<10} {m1:>10.1f} {d1:>10.1f} {m2:>10.1f} {d2:>10.1f} {m2 / m1:>10.2f} {d2 / d1:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("s", "b", "l", "h"), default="s", help="ViT size of both models")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per stage (interleaved)")
    parser.add_argument("--people", type=int, default=8, help="people in the image (at most 8)")
    args = parser.parse_args(argv)
    missing = adapter_stages.missing_stack()
    if missing:
        print(f"bench_pose_v2: skipped ({missing})")
        return 0
    print(f"load average before: {os.getloadavg()}")
    rows = measure(args.size, args.device, args.repeat, min(args.people, 8))
    print(format_rows(rows, args.size, min(args.people, 8)))
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
