"""The testing World: values back, failures reported with tracebacks and stacks, restarts."""

from __future__ import annotations

import os
import time

import pytest

from distcomm import InvalidArgumentError
from distcomm.testing import RankDiedError, RankFailure, RankTimeoutError, World


def rank_and_size(comm, offset=0, *, scale=1):
    return (comm.rank + offset) * scale, comm.world_size


def fails_on_rank_1(comm):
    if comm.rank == 1:
        raise KeyError("only rank 1")
    return "fine"


def sleeps_forever_on_rank_0(comm):
    if comm.rank == 0:
        while True:
            time.sleep(0.05)
    return "done"


def dies_on_rank_1(comm):
    if comm.rank == 1:
        os._exit(7)
    return "survived"


def test_run_returns_values_in_rank_order_with_args(dist_world) -> None:
    assert dist_world(3).run(rank_and_size, 1, scale=10) == [(10, 3), (20, 3), (30, 3)]


def test_a_failing_rank_is_reported_with_its_traceback_and_the_world_recovers(dist_world) -> None:
    world = dist_world(2)
    with pytest.raises(RankFailure, match=r"1 of 2 ranks failed:\n--- rank 1: KeyError: 'only rank 1'") as info:
        world.run(fails_on_rank_1)
    assert "fails_on_rank_1" in str(info.value) and info.value.outcomes[0].value == "fine"
    assert world.run(rank_and_size) == [(0, 2), (1, 2)]


def test_a_hung_rank_is_killed_and_its_stack_reported() -> None:
    with World(2, timeout=5) as world:
        world.run(rank_and_size)  # the ranks import this module now, not inside the timed call
        started = time.monotonic()
        outcomes = world.run_outcomes(sleeps_forever_on_rank_0, timeout=1.0)
        assert time.monotonic() - started < 5
        assert isinstance(outcomes[0].error, RankTimeoutError) and "within 1.0 s" in str(outcomes[0].error)
        assert "sleeps_forever_on_rank_0" in outcomes[0].traceback
        assert outcomes[1].value == "done"
        assert world.run(rank_and_size) == [(0, 2), (1, 2)] and world.starts == 2


def test_a_dead_rank_is_reported(dist_world) -> None:
    outcomes = dist_world(2).run_outcomes(dies_on_rank_1)
    assert outcomes[0].value == "survived"
    assert isinstance(outcomes[1].error, RankDiedError) and "exit code 7" in str(outcomes[1].error)


def test_functions_must_be_importable(dist_world) -> None:
    with pytest.raises(InvalidArgumentError, match="module-level function"):
        dist_world(2).run(lambda comm: comm.rank)


def test_bad_world_size() -> None:
    with pytest.raises(InvalidArgumentError, match="positive int"):
        World(0)
