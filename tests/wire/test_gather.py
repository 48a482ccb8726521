"""Gathers with the same-shape promise: one collective, and CheckedCommunicator holds ranks to it."""

from __future__ import annotations

import pytest
import torch

from distcomm import CheckedCommunicator, CollectiveMismatchError, InvalidArgumentError, LocalCommunicator


def same_shape_gathers(comm):
    r = comm.rank
    mine = torch.full((2, 3), float(r))
    gathered = comm.all_gather(mine, same_shape=True)
    handle = comm.all_gather_async(torch.arange(3) + 10 * r, same_shape=True)
    return [t.tolist() for t in gathered], [t.tolist() for t in handle.wait()], handle.asynchronous


def test_same_shape_gathers_give_every_rank_every_tensor(dist_world) -> None:
    expected_big = [[[0.0] * 3] * 2, [[1.0] * 3] * 2]
    expected_small = [[0, 1, 2], [10, 11, 12]]
    assert dist_world(2).run(same_shape_gathers) == [(expected_big, expected_small, True)] * 2


def broken_promise(comm):
    checked = CheckedCommunicator(comm, timeout=5)
    try:
        checked.all_gather(torch.ones(2 + comm.rank), same_shape=True)
    except CollectiveMismatchError as error:
        return str(error)
    return "not caught"


def test_checking_catches_a_broken_same_shape_promise(dist_world) -> None:
    for message in dist_world(2).run(broken_promise):
        assert "rank 0: all_gather float32[2] same_shape; rank 1: all_gather float32[3] same_shape" in message


def test_same_shape_takes_a_tensor() -> None:
    comm = LocalCommunicator()
    with pytest.raises(InvalidArgumentError, match="same_shape=True\\) takes a tensor"):
        comm.all_gather([1, 2], same_shape=True)
    (only,) = comm.all_gather(torch.ones(2), same_shape=True)
    assert only.tolist() == [1.0, 1.0]


def gather_into_out(comm):
    out = torch.empty(comm.world_size, 2)
    first = comm.all_gather(torch.full((2,), float(comm.rank)), same_shape=True, out=out)
    second = comm.all_gather_async(torch.full((2,), 5.0 + comm.rank), same_shape=True, out=out).wait()
    return [t.data_ptr() for t in first] == [t.data_ptr() for t in second], out.tolist()


def test_out_is_filled_and_reused(dist_world) -> None:
    assert dist_world(2).run(gather_into_out) == [(True, [[5.0, 5.0], [6.0, 6.0]])] * 2


def test_a_wrong_out_is_a_clear_error() -> None:
    comm = LocalCommunicator()
    with pytest.raises(InvalidArgumentError, match=r"out must be a contiguous float32\[1, 3\] tensor"):
        comm.all_gather(torch.ones(3), same_shape=True, out=torch.empty(2, 3))
    with pytest.raises(InvalidArgumentError, match="out is for same_shape=True"):
        comm.all_gather(torch.ones(3), out=torch.empty(1, 3))
    out = torch.empty(1, 3)
    assert comm.all_gather(torch.ones(3), same_shape=True, out=out)[0].data_ptr() == out.data_ptr()


def large_gathers(comm):
    """Tensors too large to ride in the opening: equal ones pass on the check alone, and any
    difference (length, dtype, number of dimensions) takes the second step on every rank."""
    r = comm.rank
    equal = comm.all_gather(torch.full((3000,), float(r)))
    uneven = comm.all_gather(torch.arange(3000 + 7 * r, dtype=torch.float64))
    outcomes = {}
    for name, mine in {
        "dtype": torch.zeros(3000, dtype=torch.float32 if r == 0 else torch.int64),
        "dims": torch.zeros(3000) if r == 0 else torch.zeros(3000, 1),
    }.items():
        try:
            comm.all_gather(mine)
            outcomes[name] = "passed"
        except InvalidArgumentError as error:
            outcomes[name] = str(error)
    comm.barrier()  # still in step after both refusals
    return [t[0].item() for t in equal], [(t.numel(), t.dtype) for t in uneven], outcomes


def test_large_tensors_of_equal_and_different_headers_are_gathered_or_refused_alike(dist_world) -> None:
    for equal, uneven, outcomes in dist_world(2).run(large_gathers):
        assert equal == [0.0, 1.0] and uneven == [(3000, torch.float64), (3007, torch.float64)]
        assert "rank 0: float32[3000]; rank 1: int64[3000]" in outcomes["dtype"]
        assert "rank 0: float32[3000]; rank 1: float32[3000, 1]" in outcomes["dims"]
