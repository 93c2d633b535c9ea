"""Deterministic fake models so the loop, the job and their tests run anywhere in milliseconds."""

from bmp_core.testing.fakes import (
    FakeDetector,
    FakePoseEstimator,
    FakeSegmenter,
    ScriptedDetector,
    build_fake_models,
)

__all__ = ["FakeDetector", "FakePoseEstimator", "FakeSegmenter", "ScriptedDetector", "build_fake_models"]
