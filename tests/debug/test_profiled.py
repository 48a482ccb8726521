"""ProfiledCommunicator: counts, sizes, latencies, bandwidths and stragglers."""

from __future__ import annotations

import time

import pytest
import torch
from support.flags import active_with_flag

from distcomm import LocalCommunicator, ProfiledCommunicator
from distcomm.debug.profiled import algorithm_bytes, bus_factor


def test_summary_per_operation_and_size() -> None:
    profiled = ProfiledCommunicator(LocalCommunicator())
    for _ in range(3):
        profiled.all_reduce(torch.ones(256))  # 1 KiB
    profiled.all_reduce({"a": 1.0, "b": torch.ones(2, dtype=torch.float64)})
    profiled.barrier()
    rows = {(row["op"], row["bytes"]): row for row in profiled.summary()}
    assert rows[("all_reduce", 1024)]["count"] == 3 and rows[("all_reduce", 24)]["count"] == 1
    assert rows[("barrier", 0)]["count"] == 1
    row = rows[("all_reduce", 1024)]
    assert row["total_bytes"] == 3072 and row["count"] == 3
    assert row["min_us"] > 0 and row["min_us"] <= row["mean_us"] <= row["max_us"]
    assert row["mean_us"] == pytest.approx(profiled.profile.stats[("all_reduce", 1024)].total_seconds / 3 * 1e6, rel=1e-3)
    assert {"op", "bytes", "count", "algbw_gbps", "busbw_gbps"} <= set(row)
    table = profiled.report()
    assert "busbw GB/s" in table.splitlines()[1] and "all_reduce" in table
    profiled.reset()
    assert profiled.summary() == []


def test_nccl_tests_bandwidth_formulas() -> None:
    assert bus_factor("all_reduce", 4) == pytest.approx(1.5)
    assert bus_factor("all_gather", 4) == pytest.approx(0.75)
    assert bus_factor("broadcast", 4) == 1.0
    assert algorithm_bytes("all_gather", 100, 4) == 400 and algorithm_bytes("all_reduce", 100, 4) == 100


def slow_rank_1(comm):
    profiled = ProfiledCommunicator(comm)
    for _ in range(3):
        if comm.rank == 1:
            time.sleep(0.1)
        profiled.all_reduce(torch.ones(4))
    return profiled.stragglers()


def test_stragglers_point_at_the_late_rank(dist_world) -> None:
    rows = dist_world(2).run(slow_rank_1)[0]
    (row,) = rows
    assert row["op"] == "all_reduce" and row["bytes"] == 16 and row["last_to_arrive"] == 1
    assert row["wait_us"][0] > 50_000 and row["wait_us"][1] == 0


def profile_environment(comm):
    with active_with_flag("DISTCOMM_PROFILE") as active:
        active.all_reduce(torch.ones(8))
        return type(active).__name__, [(r["op"], r["bytes"], r["count"]) for r in active.summary()]


def test_distcomm_profile_times_the_active_communicator(dist_world) -> None:
    assert dist_world(2).run(profile_environment) == [("ProfiledCommunicator", [("all_reduce", 32, 1)])] * 2
