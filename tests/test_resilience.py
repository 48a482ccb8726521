"""Resilient: a training loop that loses a real Gloo rank mid-step and finishes on the survivors."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from distcomm import InvalidArgumentError, LocalCommunicator, Resilient
from distcomm.testing import RankDiedError, World

pytestmark = pytest.mark.integration  # real jobs or subprocesses: left out of the fast loop


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


def failing_without_a_death(comm):
    """Two steps that fail with every rank alive: ranks in different calls, then a rank too slow."""
    import time

    from distcomm import CheckedCommunicator, CollectiveError, CollectiveMismatchError

    checked = Resilient(CheckedCommunicator(comm, timeout=10), {"x": torch.zeros(1)}, settle=0.5)
    job = Resilient(comm, {"x": torch.zeros(1)}, settle=3.0)  # room for rank 1, late by design
    outcomes, steps = [], []

    def mismatched(comm) -> None:
        steps.append("mismatched")
        comm.all_reduce(torch.ones(1)) if comm.rank == 0 else comm.broadcast(torch.ones(1))

    def slow(comm) -> None:
        steps.append("slow")
        if comm.rank == 1:
            time.sleep(3.5)  # well past the 2 s timeout of rank 0's all_reduce, then in it too late
        comm.all_reduce(torch.ones(1))

    for runner, step in ((checked, mismatched), (job, slow)):
        try:
            runner.run(step)
            outcomes.append("returned")
        except (CollectiveMismatchError, CollectiveError) as error:
            outcomes.append(type(error).__name__)
    return outcomes, steps, checked.lost + job.lost, job.comm.world_size, job.comm.all_reduce(1)


def test_a_failure_that_lost_no_rank_is_raised_not_run_again() -> None:
    with World(2, timeout=2.0, call_timeout=60) as world:
        results = world.run(failing_without_a_death)
    for outcomes, steps, lost, size, total in results:
        assert outcomes == ["CollectiveMismatchError", "CollectiveError"] and steps == ["mismatched", "slow"]
        assert (lost, size, total) == ([], 2, 2)  # both came to the shrink: a communicator of both, still working


def one_rank_raises_in_its_step(comm):
    """Rank 1's step raises a plain error (a bug of its own, every process alive); the others then
    wait in a collective it never joins."""
    job = Resilient(comm, {"x": torch.zeros(1)}, settle=0.5)

    def step(comm) -> float:
        if comm.rank == 1:
            raise ValueError("a bug on rank 1 only")
        return comm.all_reduce(1.0)

    try:
        job.run(step)
    except Exception as error:  # noqa: BLE001 (what each rank ended with is the result)
        return type(error).__name__, str(error), job.lost, job.comm.world_size
    return "returned", "", job.lost, job.comm.world_size


def test_a_rank_whose_step_raised_is_alive_and_not_dropped_the_job_raises_on_every_rank() -> None:
    with World(3, timeout=2.0, call_timeout=60) as world:
        results = world.run(one_rank_raises_in_its_step)
    assert results[1] == ("ValueError", "a bug on rank 1 only", [], 3)
    for kind, message, lost, size in (results[0], results[2]):
        assert kind == "CollectiveError" and lost == [] and size == 3, (kind, message)
        assert "rank(s) 1 are alive but their own step raised (rank 1: ValueError: a bug on rank 1 only)" in message


def test_without_failures_it_only_runs_the_step() -> None:
    state = {"x": torch.zeros(1)}
    job = Resilient(LocalCommunicator(), state)
    assert job.run(lambda comm: comm.all_reduce(2)) == 2 and job.lost == [] and job.comm.world_size == 1
    with pytest.raises(InvalidArgumentError, match="dict of tensors"):
        Resilient(LocalCommunicator(), {"step": 3})  # type: ignore[dict-item]
