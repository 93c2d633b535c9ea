"""GPU workers get CPUs and matching torch threads, and may share a GPU (job.gpus_per_worker)."""

from __future__ import annotations

from typing import Any

import pytest

from bmp_core.config import ConfigError, config_from_dict
from jobs.actor_pool import ActorPool, gpu_worker_cpu_share


def test_gpu_worker_cpu_share_splits_each_gpu_nodes_cores() -> None:
    assert gpu_worker_cpu_share([(16.0, 1.0)], 1.0) == 16.0  # one GPU worker gets the node
    assert gpu_worker_cpu_share([(16.0, 1.0)], 0.5) == 8.0  # two on one GPU
    assert gpu_worker_cpu_share([(16.0, 8.0)], 1.0) == 2.0
    assert gpu_worker_cpu_share([(10.0, 4.0)], 1.0) == 2.0  # rounded down to what fits: 4 x 2.5 -> 2
    assert gpu_worker_cpu_share([(2.0, 4.0)], 1.0) == 0.5  # fewer cores than workers: a fraction
    # the smallest GPU node decides (a worker must fit wherever it lands); CPU-only nodes do not count
    assert gpu_worker_cpu_share([(64.0, 0.0), (32.0, 2.0), (16.0, 2.0)], 1.0) == 8.0
    assert gpu_worker_cpu_share([(8.0, 0.0)], 1.0) == 0.0


class _FakeRemote:
    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self.calls = calls

    def options(self, **options: Any) -> _FakeRemote:
        self.calls.append(options)
        return self

    def remote(self, *args: Any) -> tuple:
        if self.calls:
            self.calls[-1]["args"] = args
        return args


class _FakeRay:
    """What ``ActorPool`` asks of ray: ``ray.remote(cls)`` / ``ray.remote(num_cpus=0)(cls)``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            return lambda cls: _FakeRemote([])
        return _FakeRemote(self.calls)


def test_gpu_actors_reserve_cpus_and_set_torch_threads() -> None:
    cfg = config_from_dict({}, ["job.gpus_per_worker=0.5"])
    ray = _FakeRay()
    pool = ActorPool(ray, cfg, 2, cfg.job.gpus_per_worker, cluster=False, num_cpus=8.0)
    assert [c["num_gpus"] for c in ray.calls] == [0.5, 0.5]
    assert [c["num_cpus"] for c in ray.calls] == [8.0, 8.0]
    assert pool.num_threads == 8 and ray.calls[0]["args"][2] == 8  # the actor sets torch to 8 threads
    cpu_pool = ActorPool(_FakeRay(), cfg, 4, 0, cluster=False, num_cpus=0.5)
    assert cpu_pool.num_threads == 1


def test_gpu_worker_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="gpus_per_worker"):
        config_from_dict({}, ["job.gpus_per_worker=0"])
    with pytest.raises(ConfigError, match="gpus_per_worker"):
        config_from_dict({}, ["job.gpus_per_worker=2"])
    with pytest.raises(ConfigError, match="gpu_worker_cpus"):
        config_from_dict({}, ["job.gpu_worker_cpus=-1"])
    assert config_from_dict({}, ["job.gpu_worker_cpus=6"]).job.gpu_worker_cpus == 6.0
