"""TorchDistBackend over real Gloo ranks: the bitwise AND of the call check, one exchange on two
ranks and Gloo's ring all-reduce on more."""

from __future__ import annotations

import time

import pytest
import torch

from distcomm import CollectiveError
from distcomm.testing import World


def words_of(rank: int, count: int) -> torch.Tensor:
    """Rank ``rank``'s words: random, negative ones and all-ones included, the same on every rank."""
    generator = torch.Generator().manual_seed(1000 + rank)
    words = torch.randint(-(2**63), 2**63 - 1, (count,), dtype=torch.int64, generator=generator)
    words[0] = -1  # all ones: the AND of every other rank's word
    return words


def bitwise_and(comm, count):
    words = words_of(comm.rank, count)
    comm.tensor_backend.all_reduce_bitwise_and(words)
    expected = words_of(0, count)
    for rank in range(1, comm.world_size):
        expected &= words_of(rank, count)
    return words.tolist(), expected.tolist()


@pytest.mark.parametrize("ranks", [2, 3])
def test_every_rank_gets_the_bitwise_and_of_every_ranks_words(dist_world, ranks: int) -> None:
    for count in (2, 5):
        results = dist_world(ranks).run(bitwise_and, count)
        assert all(got == expected for got, expected in results), results
        assert len({tuple(got) for got, _ in results}) == 1


TIMEOUT = 1.0


@pytest.fixture
def short_world():
    """Two ranks of their own whose collectives time out after 1 s: each test below breaks its
    group (and catches the error, so the world would not know to start its ranks again)."""
    with World(2, timeout=TIMEOUT, call_timeout=30.0) as world:
        yield world


def barrier_with_rank_1_late(comm, lateness):
    if comm.rank == 1:
        time.sleep(lateness)
    started = time.monotonic()
    try:
        comm.barrier()
    except CollectiveError:
        return "raised", time.monotonic() - started
    return "passed", time.monotonic() - started


@pytest.mark.integration  # a world of its own, whose group the failure breaks
def test_a_rank_that_comes_after_its_peer_timed_out_fails_too(short_world) -> None:
    """Two ranks check a call in one exchange: the rank that gave up at the timeout takes its
    connection down, so the late rank cannot pass on the word the other left behind."""
    outcomes = short_world.run_outcomes(barrier_with_rank_1_late, TIMEOUT + 2.0)
    (first, waited), (second, _) = (o.value for o in outcomes)
    assert (first, second) == ("raised", "raised"), outcomes
    assert waited < TIMEOUT + 3.0


def checked_call_against(comm, peer_call):
    started = time.monotonic()
    try:
        if comm.rank == 0:
            comm.barrier()
        elif peer_call == "lone all_reduce":
            comm.all_reduce(torch.ones(8))
        else:
            comm.recv(src=0)
    except CollectiveError:
        return "raised", time.monotonic() - started
    return "passed", time.monotonic() - started


@pytest.mark.integration
@pytest.mark.parametrize("peer_call", ["lone all_reduce", "recv"])
def test_a_check_against_a_peer_in_another_kind_of_call_fails_on_both_within_the_timeout(short_world, peer_call: str) -> None:
    """The exchange's tag is its own: a peer in an unchecked all_reduce or a receive never meets it."""
    outcomes = short_world.run_outcomes(checked_call_against, peer_call)
    assert [o.value[0] for o in outcomes] == ["raised", "raised"], outcomes
    assert all(o.value[1] < TIMEOUT + 3.0 for o in outcomes)
