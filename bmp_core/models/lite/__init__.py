"""The lite backend: MediaPipe BlazePose (weights inside the wheel, offline, CPU): person detector, pose, mask."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bmp_core.config import ModelsConfig
    from bmp_core.ports import BmpModels


def build_lite_models(cfg: ModelsConfig) -> BmpModels:
    """BlazePose pose estimator + BlazePose segmenter sharing one person cache, and BlazePose's own
    person detector (``detector.py``) unless ``models.lite.detect_people`` is false.

    Here, not in ``blazepose.py``: the detector poses its regions with the estimator, so the module that
    builds both imports both (no import cycle between them); mediapipe is imported only when called.
    """
    from bmp_core.models.lite.blazepose import BlazePoseEstimator, BlazePoseSegmenter
    from bmp_core.ports import BmpModels

    estimator = BlazePoseEstimator(cfg.lite)
    detector = None
    if cfg.lite.detect_people:
        from bmp_core.models.lite.detector import BlazePersonDetector

        detector = BlazePersonDetector(cfg.lite, estimator)
    return BmpModels(detector=detector, pose=estimator, segmenter=BlazePoseSegmenter(estimator))
