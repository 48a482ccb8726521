"""ProfileHook: timings per (operation, size), and bandwidths counted as nccl-tests counts them."""

from __future__ import annotations

import torch

from distcomm import LocalCommunicator
from distcomm.instrument.profile_hook import OpStats, ProfileHook, algorithm_bytes, bus_factor


def test_bandwidth_factors_follow_nccl_tests() -> None:
    assert bus_factor("all_reduce", 4) == 1.5 and bus_factor("all_gather", 4) == 0.75 and bus_factor("broadcast", 4) == 1.0
    assert algorithm_bytes("all_gather", 100, 4) == 400 and algorithm_bytes("all_reduce", 100, 4) == 100


def test_the_hook_times_calls_by_operation_and_size_and_skips_failures() -> None:
    hook = ProfileHook()
    comm = LocalCommunicator()
    comm.register_hook(hook)
    comm.all_reduce(torch.ones(4))
    comm.all_reduce(torch.ones(4))
    try:
        comm.all_reduce("text")  # type: ignore[arg-type]
    except ValueError:
        pass
    (key, stats), = hook.stats.items()
    assert key == ("all_reduce", 16) and stats.count == 2 and 0 < stats.min_seconds <= stats.mean_seconds <= stats.max_seconds
    assert isinstance(hook.for_split(comm), ProfileHook) and OpStats().mean_seconds == 0.0
