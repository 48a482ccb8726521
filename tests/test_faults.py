"""Faults and load: a rank killed mid-job, and memory under thousands of collectives."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from distcomm import CollectiveError
from distcomm.testing import RankDiedError, World
from distcomm.testing.soak import soak

pytestmark = pytest.mark.integration  # real jobs or subprocesses: left out of the fast loop

TIMEOUT = 2.0

OPERATIONS = {
    "barrier": lambda c: c.barrier(),
    "broadcast": lambda c: c.broadcast(torch.ones(8), src=0),
    "all_reduce tensor": lambda c: c.all_reduce(torch.ones(8)),
    "all_reduce number": lambda c: c.all_reduce(1.0),
    "reduce_dict": lambda c: c.reduce_dict({"loss": 1.0}),
    "all_gather": lambda c: c.all_gather(torch.ones(c.rank + 1)),
    "all_gather_object": lambda c: c.all_gather_object("x"),
    "gather_object": lambda c: c.gather_object("x", dst=1),
    "broadcast_object": lambda c: c.broadcast_object("x", src=1),
    "scatter_object": lambda c: c.scatter_object(["a", "b", "c"] if c.rank == 0 else None),
}


@pytest.fixture(scope="module")
def world():
    with World(3, timeout=TIMEOUT, call_timeout=60.0) as w:
        yield w


def job_where_rank_2_dies(comm, operation):
    run = OPERATIONS[operation]
    for step in range(6):
        if comm.rank == 2 and step == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        started = time.monotonic()
        try:
            run(comm)
        except CollectiveError as error:
            return step, time.monotonic() - started, str(error)
    comm.barrier()
    return None


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_every_survivor_raises_within_the_timeout(world, operation: str) -> None:
    outcomes = world.run_outcomes(job_where_rank_2_dies, operation)
    assert isinstance(outcomes[2].error, RankDiedError)
    for survivor in outcomes[:2]:
        assert survivor.ok and survivor.value is not None, f"rank {survivor.rank} did not raise: {survivor}"
        step, elapsed, message = survivor.value
        assert step >= 2 and elapsed < TIMEOUT + 5, (step, elapsed)
        assert f"on rank {survivor.rank}" in message


def soak_rank(comm, count):
    return soak(comm, count, checkpoints=4)


def test_memory_is_stable_over_mixed_collectives_on_four_ranks(dist_world) -> None:
    for sizes in dist_world(4).run(soak_rank, 600, timeout=120):
        growth_mib = (sizes[-1] - sizes[0]) / 2**20
        assert growth_mib < 16, f"resident memory grew by {growth_mib:.1f} MiB: {sizes}"
