"""Every collective meets every other: ranks in different calls get the same clear error.

Each case below is one public call whose first step is the opening slot
(:mod:`distcomm.wire.call_check`). Ranks are put in different cases, every ordered pair of
them, on 2 and 4 real Gloo ranks, plain and under ``CheckedCommunicator``: every rank
must raise the same error with the same message, and then the ranks must still be in
step (a plain all_reduce after the failures gives the right answer).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from support.transports import BackendCommunicator

from distcomm import CheckedCommunicator, CollectiveMismatchError, Communicator, InconsistentInputError
from distcomm.errors import WireFormatError
from distcomm.wire.call_check import (
    CHECK_WORDS,
    MAGIC,
    PREFIX_BYTES,
    TAG_BYTES,
    body_room,
    code_word,
    read_prefixes,
    slot_bytes,
    tag_of,
)

CASES: dict[str, Callable[[Communicator], Any]] = {
    "barrier": lambda c: c.barrier(),
    "broadcast dict of tensors": lambda c: c.broadcast({"w": torch.ones(3)}),
    "broadcast int": lambda c: c.broadcast(5),
    "broadcast from 1": lambda c: c.broadcast("x", src=1),
    "broadcast scalar tensor from 1": lambda c: c.broadcast(torch.tensor(1.5), src=1),
    "all_reduce dict of tensors": lambda c: c.all_reduce({"a": torch.ones(2)}),
    "all_reduce int": lambda c: c.all_reduce(5),
    "reduce_dict": lambda c: c.reduce_dict({"loss": 1.0}),
    "all_gather tensor": lambda c: c.all_gather(torch.ones(2)),
    "all_gather large tensor": lambda c: c.all_gather(torch.ones(3000)),
    "all_gather int": lambda c: c.all_gather(7),
    "all_gather dict of tensors": lambda c: c.all_gather({"a": torch.ones(2)}),
    "all_gather dict of floats": lambda c: c.all_gather({"a": 1.0}),
    "all_gather_object": lambda c: c.all_gather_object("x"),
    "all_gather_object large": lambda c: c.all_gather_object("x" * 10_000),
    "gather_object": lambda c: c.gather_object("x"),
    "broadcast_object": lambda c: c.broadcast_object("x"),
    "broadcast_object from 1": lambda c: c.broadcast_object("x", src=1),
    "broadcast_object_list": lambda c: c.broadcast_object_list([None]),
    "scatter_object": lambda c: c.scatter_object(list(range(c.world_size)) if c.rank == 0 else None),
    "split": lambda c: c.split(list(range(c.world_size))),
    "reduce dict": lambda c: c.reduce({"a": 1.0}),
    "scatter tensors": lambda c: c.scatter([torch.ones(2)] * c.world_size if c.rank == 0 else None),
    "reduce_scatter list": lambda c: c.reduce_scatter([torch.ones(2)] * c.world_size),
    "all_to_all tensors": lambda c: c.all_to_all([torch.ones(2)] * c.world_size),
    "all_to_all_async": lambda c: c.all_to_all_async([torch.ones(2)] * c.world_size).wait(),
}
SAME_RESULT = {
    frozenset({"all_gather tensor", "all_gather large tensor"}),
    frozenset({"all_gather_object", "all_gather_object large"}),
}
"""Pairs that are one call with data that may differ: they meet and give a result."""
NAMES = list(CASES)
PAIRS = [(a, b) for a, b in itertools.permutations(NAMES, 2) if frozenset({a, b}) not in SAME_RESULT]


def every_pair(comm: Communicator, pairs: list[tuple[str, str]], checked: bool) -> list[Any]:
    """Run each pair (even ranks the first call, odd ranks the second); what each raised."""
    c = CheckedCommunicator(comm, timeout=10) if checked else comm
    seen = []
    for first, second in pairs:
        try:
            CASES[first if c.rank % 2 == 0 else second](c)
            seen.append(("returned", None))
        except Exception as error:  # noqa: BLE001 (the test compares what every rank raised)
            # A CollectiveError names the rank and its own call first; the reason after it must match.
            seen.append((type(error).__name__, re.sub(r"^\w+ failed on rank \d+: ", "", str(error))))
    seen.append(("in step", comm.all_reduce(torch.ones(1)).item()))
    return seen


@pytest.mark.parametrize("checked", [False, True], ids=["plain", "checked"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_in_different_collectives_raise_the_same_error_everywhere(dist_world, world_size: int, checked: bool) -> None:
    # Every pair plainly on 2 ranks; checking fingerprints every call alike, a third of them suffices there.
    pairs = PAIRS[:: 1 if world_size == 2 and not checked else 3 if world_size == 2 else 5]
    per_rank = dist_world(world_size).run(every_pair, pairs, checked, timeout=240)
    expected = (CollectiveMismatchError if checked else InconsistentInputError).__name__
    for index, (first, second) in enumerate(pairs):
        outcomes = {rank: seen[index] for rank, seen in enumerate(per_rank)}
        kinds = {kind for kind, _ in outcomes.values()}
        messages = {message for _, message in outcomes.values()}
        assert kinds == {expected} and len(messages) == 1, (first, second, outcomes)
    assert all(seen[-1] == ("in step", float(world_size)) for seen in per_rank)


def test_the_message_names_each_ranks_call(dist_world) -> None:
    per_rank = dist_world(2).run(every_pair, [("all_reduce dict of tensors", "all_gather_object")], False)
    message = per_rank[0][0][1]
    assert "ranks are in different collectives" in message
    assert "rank 0: all_reduce layout" in message and "rank 1: all_gather_object objects" in message


def test_one_call_with_data_of_other_sizes_still_meets(dist_world) -> None:
    per_rank = dist_world(2).run(every_pair, [tuple(pair) for pair in SAME_RESULT], False)
    assert [[kind for kind, _ in seen[:-1]] for seen in per_rank] == [["returned"] * len(SAME_RESULT)] * 2


# ------------------------------------------------------------ the prefix, read alone


def prefix(tag: bytes, size: int, magic: bytes = MAGIC) -> np.ndarray:
    row = np.zeros(slot_bytes(2), dtype=np.uint8)
    raw = magic + tag + size.to_bytes(8, "little", signed=True)
    row[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return row


def test_prefixes_are_checked_before_any_body_is_read() -> None:
    mine = tag_of("all_reduce", "layout")
    good = prefix(mine, 16)
    assert read_prefixes(np.stack([good, good]), "all_reduce", "layout", slot_bytes(2)) == (16, 16)
    with pytest.raises(WireFormatError, match=r"rank\(s\) 1 sent bytes that are not a distcomm call header"):
        read_prefixes(np.stack([good, prefix(mine, 16, magic=b"torch!!!")]), "all_reduce", "layout", slot_bytes(2))
    with pytest.raises(WireFormatError, match=r"announced an opening body of 5000 bytes, outside 0..4048"):
        read_prefixes(np.stack([good, prefix(mine, 5000)]), "all_reduce", "layout", slot_bytes(2))
    with pytest.raises(WireFormatError, match=r"outside 0\.\.4048"):
        read_prefixes(np.stack([good, prefix(mine, -1)]), "all_reduce", "layout", slot_bytes(2))
    with pytest.raises(InconsistentInputError, match=r"rank 1: unreadable tag"):
        read_prefixes(np.stack([good, prefix(b"\xff" * TAG_BYTES, 0)]), "all_reduce", "layout", slot_bytes(2))


def test_one_check_size_for_every_call_and_world_and_one_slot_size_for_every_call_of_a_world() -> None:
    assert CHECK_WORDS == 2  # what each rank sends to check a call, whatever the world size
    assert slot_bytes(16) == 4096 and slot_bytes(17) == 512 and body_room(17) == 512 - PREFIX_BYTES
    assert len(tag_of("a" * 40, "b")) == TAG_BYTES


def steps_of_openings(comm, bitwise: bool):
    """The collectives of three openings: equal bodies, bodies that differ, and ranks in different
    calls; in the bitwise form (Gloo's) or the ordered one (NCCL's, which has no bitwise AND)."""
    from distcomm.backends.torch_dist import TorchDistBackend
    from distcomm.wire.call_check import check_call

    steps = []

    class Counting(TorchDistBackend):
        def ands_bits(self, device):
            return bitwise and super().ands_bits(device)

        def all_reduce(self, tensor, op):
            steps.append(("all_reduce", tensor.numel(), op.value))
            super().all_reduce(tensor, op)

        def all_reduce_bitwise_and(self, tensor):
            steps.append(("all_reduce", tensor.numel(), "and"))
            super().all_reduce_bitwise_and(tensor)

        def all_gather(self, tensor, out=None):
            steps.append(("all_gather", tensor.numel()))
            return super().all_gather(tensor, out)

    context = BackendCommunicator(Counting())._context
    equal = check_call(context, "x", "same", b"body")
    seen = [list(steps), equal.sizes, bytes(equal.body(comm.world_size - 1))]
    steps.clear()
    differ = check_call(context, "x", "differ", bytes([comm.rank]) * (comm.rank + 1))
    seen += [list(steps), differ.sizes, [bytes(differ.body(r)) for r in range(comm.world_size)]]
    steps.clear()
    try:
        check_call(context, "x", f"call {comm.rank % 2}")
    except InconsistentInputError as error:
        seen += [list(steps), str(error)]
    return seen


@pytest.mark.parametrize(("world_size", "bitwise"), [(2, True), (4, True), (2, False), (4, False)])
def test_equal_openings_take_one_two_word_check_and_others_a_second_step(dist_world, world_size: int, bitwise: bool) -> None:
    n = world_size
    slot = ("all_gather", slot_bytes(n))
    check = ("all_reduce", 2, "and" if bitwise else "max")
    for seen in dist_world(n).run(steps_of_openings, bitwise):
        assert seen[:3] == [[check], (4,) * n, b"body"]
        assert seen[3:6] == [[check, slot], tuple(range(1, n + 1)), [bytes([r]) * (r + 1) for r in range(n)]]
        assert seen[6] == [check, slot] and "rank 0: x call 0; rank 1: x call 1" in seen[7]


def test_code_words_have_32_one_bits_and_an_and_of_different_ones_has_fewer() -> None:
    rng = np.random.default_rng(7)
    digests = [int(d) for d in rng.integers(0, 2**62, size=2000)] + [0, 2**62 - 1, 2**52 - 1, 2**52]
    words = [code_word(d) % 2**64 for d in digests]
    assert all(bin(w).count("1") == 32 for w in words)
    assert len({code_word(d) for d in digests}) == len({d % 2**52 for d in digests})  # one word per 52 bits of digest
    for a, b in zip(words, words[1:]):
        assert (a == b) == (bin(a & b).count("1") == 32)  # every rank reads the same verdict from the AND
    assert all(-(2**63) <= code_word(d) < 2**63 for d in digests)  # an int64 as it travels


@pytest.mark.integration  # a world of its own
def test_above_sixteen_ranks_the_smaller_slot_still_meets_every_call() -> None:
    """Over 16 ranks every call's slot is 512 bytes: different calls still meet (no process aborts)."""
    from distcomm.testing import World

    pairs = PAIRS[::9]
    with World(17, timeout=20, call_timeout=240, start_timeout=240) as world:
        per_rank = world.run(every_pair, pairs, False)
    for index, pair in enumerate(pairs):
        outcomes = {seen[index] for seen in per_rank}
        assert len(outcomes) == 1 and next(iter(outcomes))[0] == "InconsistentInputError", (pair, outcomes)
    assert all(seen[-1] == ("in step", 17.0) for seen in per_rank)


LONE_TENSOR_CASES: dict[str, Callable[[Communicator], Any]] = {
    "all_reduce sum": lambda c: c.all_reduce(torch.ones(16)),
    "all_reduce max": lambda c: c.all_reduce(torch.ones(16), "max"),
    "all_reduce float64": lambda c: c.all_reduce(torch.ones(8, dtype=torch.float64)),
    "all_reduce_async": lambda c: c.all_reduce_async(torch.ones(16)).wait(),
    "broadcast_async": lambda c: c.broadcast_async(torch.ones(16)).wait(),
    "same_shape gather": lambda c: c.all_gather(torch.ones(16), same_shape=True),
    "barrier": lambda c: c.barrier(),
}
"""The paths that send a lone tensor as it is (no opening), and one that opens."""


def lone_tensor_pairs_checked(comm: Communicator, pairs: list[tuple[str, str]]) -> list[Any]:
    c = CheckedCommunicator(comm, timeout=10)
    seen = []
    for first, second in pairs:
        try:
            LONE_TENSOR_CASES[first if c.rank % 2 == 0 else second](c)
            seen.append("returned")
        except CollectiveMismatchError as error:
            seen.append(re.sub(r"^\w+ failed on rank \d+: ", "", str(error)))
    seen.append(comm.all_reduce(torch.ones(1)).item())
    return seen


def test_checking_catches_every_pair_that_torch_cannot_tell_apart(dist_world) -> None:
    pairs = list(itertools.permutations(LONE_TENSOR_CASES, 2))
    per_rank = dist_world(2).run(lone_tensor_pairs_checked, pairs, timeout=240)
    for index, pair in enumerate(pairs):
        outcomes = {seen[index] for seen in per_rank}
        assert len(outcomes) == 1 and "ranks made different collective calls" in next(iter(outcomes)), (pair, outcomes)
    assert [seen[-1] for seen in per_rank] == [2.0, 2.0]
