"""Surviving a lost rank: real Gloo ranks killed with SIGKILL (before and during the agreement)
or stopped with SIGSTOP; the survivors agree on one membership and go on."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from distcomm import ClosedCommunicatorError, CollectiveError, ExcludedRankError, LocalCommunicator
from distcomm.testing import RankDiedError, World
from distcomm.wire.survivors import arrive

pytestmark = pytest.mark.integration  # real jobs or subprocesses: left out of the fast loop

TIMEOUT = 2.0


def lose(comm, dying: tuple[int, ...], clock: str):
    """Ranks in ``dying`` die at step 2; the others shrink and go on. Returns (old rank, new rank,
    new world size, the sum of the survivors' old ranks, seconds from the death to the first
    collective done on the new communicator)."""
    for step in range(5):
        if comm.rank in dying and step == 2:
            Path(clock).write_text(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            comm.all_reduce(torch.ones(4))
        except CollectiveError:
            survivors = comm.shrink()  # the default settle: a survivor a timeout late still arrives
            total = survivors.all_reduce(comm.rank)
            elapsed = time.time() - float(Path(clock).read_text())
            with pytest.raises(ClosedCommunicatorError):
                comm.barrier()
            return comm.rank, survivors.rank, survivors.world_size, total, elapsed
    return None


@pytest.mark.parametrize(("ranks", "dying"), [(2, (1,)), (4, (2,)), (4, (1, 3))])
def test_survivors_shrink_and_go_on(tmp_path, ranks: int, dying: tuple[int, ...]) -> None:
    with World(ranks, timeout=TIMEOUT, call_timeout=60) as world:
        outcomes = world.run_outcomes(lose, dying, str(tmp_path / "death"))
    alive = [r for r in range(ranks) if r not in dying]
    for outcome in outcomes:
        if outcome.rank in dying:
            assert isinstance(outcome.error, RankDiedError)
            continue
        assert outcome.ok, outcome
        old, new, size, total, elapsed = outcome.value
        assert (new, size, total) == (alive.index(old), len(alive), sum(alive))
        assert elapsed > 0  # how long it took is measured by benchmarks/goals.py (goal: timeout + 2 s), not asserted here


def a_rank_dies(comm, dying: int) -> bool:
    """Steps of all_reduce in which rank ``dying`` kills itself at step 2; whether a collective failed here."""
    try:
        for step in range(5):
            if comm.rank == dying and step == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            comm.all_reduce(torch.ones(1))
    except CollectiveError:
        return True
    return False


def shrunk(comm):
    """The survivors' world size, their old ranks, and the generations the shrink took."""
    survivors = comm.shrink(0.5)
    return survivors.world_size, survivors.all_gather_object(comm.rank), comm._state.generations


def die_during_the_agreement(comm):
    """Rank 3 dies; rank 2 arrives in the agreement, then dies before the group forms."""
    if not a_rank_dies(comm, 3):
        return None
    if comm.rank == 2:
        store = comm.tensor_backend.store
        arrive(store, f"distcomm/shrink/{comm.group_name}", 0, comm.rank, note="0")  # counted in, then gone
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)  # let rank 2 be counted in the first agreement
    return shrunk(comm)


def test_a_survivor_that_dies_during_the_agreement_is_left_out_next_time() -> None:
    with World(4, timeout=TIMEOUT, call_timeout=60) as world:
        outcomes = world.run_outcomes(die_during_the_agreement)
    assert [o.ok for o in outcomes] == [True, True, False, False]
    for outcome in outcomes[:2]:
        size, members, generations = outcome.value
        assert size == 2 and members == [0, 1] and generations == 2  # the first generation could not form


def forming_fails_on_one_survivor(comm):
    """Rank 1 dies; rank 2 joins the survivors' group as the others do, then fails (as when its own
    wait timed out just as theirs ended). Nobody may go on in a group another has left."""
    if comm.rank == 2:
        backend_type = type(comm.tensor_backend)
        real = backend_type.survivors

        def forms_then_fails(self, *args, **kwargs):
            real(self, *args, **kwargs)
            backend_type.survivors = real  # once
            raise CollectiveError("shrink", comm.rank, "timed out while forming the group (injected)")

        backend_type.survivors = forms_then_fails
    return shrunk(comm) if a_rank_dies(comm, 1) else None


def test_a_group_that_one_survivor_failed_to_form_is_dropped_by_all() -> None:
    with World(3, timeout=TIMEOUT, call_timeout=60) as world:
        outcomes = world.run_outcomes(forming_fails_on_one_survivor)
    assert isinstance(outcomes[1].error, RankDiedError)
    assert [o.value for o in (outcomes[0], outcomes[2])] == [(2, [0, 2], 2)] * 2  # the second generation's group


def stopped(comm):
    """Rank 3 stops itself; the others shrink without it, then wake it: it must not rejoin."""
    pids = comm.all_gather_object(os.getpid())
    if comm.rank == 3:
        os.kill(os.getpid(), signal.SIGSTOP)  # woken by rank 0 once the others shrank
        try:
            comm.all_reduce(torch.ones(1))
        except CollectiveError:
            pass
        try:
            comm.shrink()
        except ExcludedRankError as error:
            return "excluded", str(error)
        return "rejoined", ""
    try:
        comm.all_reduce(torch.ones(1))
    except CollectiveError:
        survivors = comm.shrink(0.5)
        result = survivors.all_reduce(1)
        if survivors.rank == 0:
            os.kill(pids[3], signal.SIGCONT)
        return "shrank", result
    return "no error", None


def test_a_stopped_rank_that_wakes_after_the_shrink_is_told_it_was_left_out() -> None:
    with World(4, timeout=TIMEOUT, call_timeout=60) as world:
        results = world.run(stopped)
    assert results[:3] == [("shrank", 3)] * 3
    kind, message = results[3]
    assert kind == "excluded" and "rank 3 is not among the survivors [0, 1, 2]" in message


def test_a_world_of_one_shrinks_to_itself() -> None:
    comm = LocalCommunicator()
    alone = comm.shrink()
    assert (alone.rank, alone.world_size, alone.all_reduce(2)) == (0, 1, 2) and comm.closed
    with pytest.raises(ValueError, match="settle"):
        LocalCommunicator().shrink(settle=0)
