"""Unit tests: no Ray, no torch, no network (Ray Data's tests/unit discipline)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests must not start Ray; integration tests do that."""
    if "ray" in sys.modules:

        def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError("ray.init() called in a unit test; put it in tests/integration")

        monkeypatch.setattr(sys.modules["ray"], "init", refuse)
