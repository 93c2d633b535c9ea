"""Unit tests: no Ray, no torch, no network, no sleeping (Ray Data's tests/unit discipline).

Tests that wait on real time (leases, heartbeats, races widened by a sleep) live in
tests/integration.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.conftest import find_testdata


@pytest.fixture(autouse=True)
def _no_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests must not start Ray; integration tests do that."""
    if "ray" in sys.modules:

        def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError("ray.init() called in a unit test; put it in tests/integration")

        monkeypatch.setattr(sys.modules["ray"], "init", refuse)


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests must not sleep: a unit test that waits on the clock is slow and flaky on a busy
    machine. Code under test that sleeps (lock settle, fake model latency) is configured not to."""

    def refuse(seconds: float) -> None:
        raise RuntimeError(f"time.sleep({seconds}) called in a unit test; put the test in tests/integration")

    monkeypatch.setattr(time, "sleep", refuse)


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The shared real photos, or a skip: a unit test must not fail on a clone without them
    (tests that only need *an* image use ``bmp_core.testing.images`` instead)."""
    path = find_testdata()
    if path is None:
        pytest.skip("shared test photos absent (../shared/testdata, $BMP_TESTDATA); this test needs "
                    "real photos")
    return path
