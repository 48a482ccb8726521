"""CheckedCommunicator: mismatched or missing collectives become named errors on every rank."""

from __future__ import annotations

import time

import pytest
import torch
from support.flags import active_with_flag
from test_invariance import describe_all

from distcomm import CheckedCommunicator, CollectiveError, CollectiveMismatchError, LocalCommunicator
from distcomm.testing import World


@pytest.fixture(scope="module")
def world():
    with World(2, timeout=10.0, call_timeout=30.0) as w:
        yield w


def mismatched_ops(comm):
    checked = CheckedCommunicator(comm, timeout=5)
    if comm.rank == 0:
        checked.all_reduce(torch.ones(3))
    else:
        checked.barrier()


def mismatched_shapes(comm):
    CheckedCommunicator(comm, timeout=5).all_reduce(torch.ones(3 + comm.rank))


def test_a_mismatch_raises_a_named_error_on_every_rank(world) -> None:
    outcomes = world.run_outcomes(mismatched_ops)
    for outcome in outcomes:
        assert isinstance(outcome.error, CollectiveMismatchError), outcome
        message = str(outcome.error)
        assert "rank 0: all_reduce float32[3] op=sum" in message and "rank 1: barrier" in message
        assert "call #1" in message
    outcomes = world.run_outcomes(mismatched_shapes)
    assert all("rank 0: all_reduce float32[3] op=sum; rank 1: all_reduce float32[4] op=sum" in str(o.error) for o in outcomes)


def rank_1_skips(comm):
    checked = CheckedCommunicator(comm, timeout=2)
    checked.barrier()
    started = time.monotonic()
    if comm.rank == 0:
        try:
            checked.all_reduce(1.0)
        except CollectiveError as error:
            return str(error), time.monotonic() - started
    return None


def test_a_rank_that_never_arrives_is_named_within_the_timeout(world) -> None:
    message, elapsed = world.run(rank_1_skips)[0]
    assert "all_reduce failed on rank 0: rank(s) 1 did not reach call #2 (all_reduce float op=sum) within 2 s" in message
    assert elapsed < 2 + 3


def transparent(comm):
    checked = CheckedCommunicator(comm, timeout=10)
    kinds = describe_all(checked)  # every collective, with rank-dependent shapes where allowed
    sub = checked.split([1])
    return kinds, type(sub).__name__ if sub else None, checked.group is comm.group


def test_matching_calls_pass_and_results_are_unchanged(world) -> None:
    expected = describe_all(LocalCommunicator())
    results = world.run(transparent)
    for rank, (kinds, sub, same_group) in enumerate(results):
        if rank:
            kinds.pop("gather_object"), expected.pop("gather_object", None)
        assert kinds == {k: v for k, v in expected.items() if k in kinds} and len(kinds) == len(expected)
        assert sub == ("CheckedCommunicator" if rank == 1 else None) and same_group


def debug_environment(comm):
    with active_with_flag("DISTCOMM_DEBUG") as active:
        active.all_reduce(1)
        return type(active).__name__


def test_distcomm_debug_checks_the_active_communicator(world) -> None:
    assert world.run(debug_environment) == ["CheckedCommunicator"] * 2


def test_a_world_of_one_needs_no_check() -> None:
    checked = CheckedCommunicator(LocalCommunicator())
    assert checked.all_reduce([1, 2]) == [1, 2] and checked.world_size == 1
    with pytest.raises(TypeError, match="wraps a Communicator"):
        CheckedCommunicator("gloo")  # type: ignore[arg-type]


def checked_timeout(comm):
    return CheckedCommunicator(comm).timeout.total_seconds(), comm.timeout.total_seconds()


def test_the_default_timeout_is_the_groups(world) -> None:
    assert world.run(checked_timeout) == [(world.timeout, world.timeout)] * world.world_size


def lone_path_differences(comm, case: str):
    """What plain mode cannot tell apart on the lone-tensor paths (rank 0 on one, rank 1 passing another thing)."""
    checked, odd = CheckedCommunicator(comm, timeout=5), comm.rank == 1
    calls = {
        "reduce_scatter dim": lambda: checked.reduce_scatter(torch.ones(4, 2), dim=5 if odd else 0),
        "reduce_scatter 0-d": lambda: checked.reduce_scatter(torch.tensor(1.0) if odd else torch.ones(2)),
        "reduce_scatter op": lambda: checked.reduce_scatter(torch.ones(2), "max" if odd else "sum"),
        "all_reduce expanded": lambda: checked.all_reduce(torch.ones(1).expand(3) if odd else torch.ones(3)),
        "all_reduce_async expanded": lambda: checked.all_reduce_async(torch.ones(1).expand(3) if odd else torch.ones(3)),
    }
    try:
        calls[case]()
    except CollectiveMismatchError as error:
        return str(error).split(": ", 1)[1]
    return "not caught"


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("reduce_scatter dim", "dim=5"),
        ("reduce_scatter 0-d", "float32[]"),
        ("reduce_scatter op", "op=max"),
        ("all_reduce expanded", "rank 1: all_reduce float32[3] (expanded or meta: cannot be filled)"),
        ("all_reduce_async expanded", "(expanded or meta: cannot be filled)"),
    ],
)
def test_what_plain_mode_cannot_tell_apart_on_the_lone_tensor_paths_is_caught(world, case: str, says: str) -> None:
    zero, one = world.run(lone_path_differences, case)
    assert zero == one and "ranks made different collective calls" in zero and says in zero, zero
