"""Run by tests/integration/test_export_ultralytics.py with the SEPARATE Ultralytics venv's Python
(Ultralytics is AGPL-3.0: test-only, never imported by bmp-label). Loads a YOLO export with
Ultralytics' own dataset check and dataset class, prints what it saw as JSON.

Usage: python _ultralytics_check.py DATA_YAML pose|segment
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data_yaml, task = sys.argv[1], sys.argv[2]
    data = check_det_dataset(data_yaml)
    out = {"names": {str(k): v for k, v in data["names"].items()}, "kpt_shape": data.get("kpt_shape"),
           "flip_idx": data.get("flip_idx")}
    for split in ("train", "val"):
        ds = YOLODataset(img_path=data[split], data=data, task=task, imgsz=64, augment=False, cache=False)
        out[split] = {
            "images": len(ds.im_files),
            "im_files": ds.im_files,
            "instances": int(sum(len(lb["cls"]) for lb in ds.labels)),
            "keypoints": [lb["keypoints"].tolist() for lb in ds.labels] if task == "pose" else None,
            "segments": [[s.tolist() for s in lb["segments"]] for lb in ds.labels] if task == "segment" else None,
            "bboxes": [lb["bboxes"].tolist() for lb in ds.labels],
        }
        sample = ds[0]  # through Ultralytics' own transforms (letterbox, format)
        out[split]["sample_keys"] = sorted(sample)
    print("ULTRALYTICS_RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
