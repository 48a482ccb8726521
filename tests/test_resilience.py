"""Resilient: a training loop that loses a real Gloo rank mid-step and finishes on the survivors."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from distcomm import InvalidArgumentError, LocalCommunicator, Resilient
from distcomm.testing import RankDiedError, World


def count_to_five(comm):
    state = {"total": torch.zeros(()), "step": torch.zeros((), dtype=torch.int64)}
    if comm.rank == 2:
        state["total"] += 100  # a survivor with a different state: rank 0's wins after the shrink
    sizes: list[int] = []
    first_rank = comm.rank

    def step(comm) -> None:
        if first_rank == 1 and int(state["step"]) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        state["total"] += comm.all_reduce(1.0)  # how many ranks took part in this step
        state["step"] += 1
        sizes.append(comm.world_size)

    job = Resilient(comm, state, settle=0.5)
    while int(state["step"]) < 5:
        job.run(step)
    return float(state["total"]), sizes, job.lost, job.comm.world_size


def test_a_lost_rank_is_left_behind_and_rank_zeros_state_carries_on() -> None:
    with World(3, timeout=2.0, call_timeout=60) as world:
        outcomes = world.run_outcomes(count_to_five)
    assert isinstance(outcomes[1].error, RankDiedError)
    for outcome in (outcomes[0], outcomes[2]):
        total, sizes, lost, size = outcome.value
        assert (lost, size) == ([1], 2)
        assert total == 3 + 3 + 2 + 2 + 2  # two steps on three ranks, then three on two (rank 0's state)
        assert sizes[-3:] == [2, 2, 2]


def test_without_failures_it_only_runs_the_step() -> None:
    state = {"x": torch.zeros(1)}
    job = Resilient(LocalCommunicator(), state)
    assert job.run(lambda comm: comm.all_reduce(2)) == 2 and job.lost == [] and job.comm.world_size == 1
    with pytest.raises(InvalidArgumentError, match="dict of tensors"):
        Resilient(LocalCommunicator(), {"step": 3})  # type: ignore[dict-item]
