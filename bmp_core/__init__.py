"""bmp_core: the BBox-Mask-Pose loop, its operations, records, config and output encodings.

Importing ``bmp_core`` loads numpy/yaml only: no torch, no Ray. The real models live in
``bmp_core.models`` (imported lazily by ``build_models``); fakes in ``bmp_core.testing``.
"""

from bmp_core.config import BmpConfig, ConfigError, LoopConfig, dump_config, load_config
from bmp_core.loop import run_bmp, run_bmp_batch
from bmp_core.ports import BmpModels, Detector, PoseEstimator, Segmenter
from bmp_core.records import BmpResult, Detections, Instances, IterationTrace, SegmentOutput

__version__ = "0.1.0"

__all__ = [
    "BmpConfig", "BmpModels", "BmpResult", "ConfigError", "Detections", "Detector", "Instances",
    "IterationTrace", "LoopConfig", "PoseEstimator", "SegmentOutput", "Segmenter", "dump_config",
    "load_config", "run_bmp", "run_bmp_batch",
]
