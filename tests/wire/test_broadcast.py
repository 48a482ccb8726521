"""Broadcasts of tensors: a scalar travels in its check (one collective) where the check can carry
it, a larger tensor after it; a lazy view is filled through a copy."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from support.transports import BackendCommunicator

from distcomm import InconsistentInputError, LocalCommunicator
from distcomm.wire.broadcast import start_broadcast


def test_a_lazy_view_is_filled_through_a_copy_and_the_handle_is_done_at_once() -> None:
    context = LocalCommunicator()._context
    view = torch._neg_view(torch.tensor([1.0, 2.0]))
    handle = start_broadcast(context, view, 0)
    assert handle.wait() is view and view.tolist() == [-1.0, -2.0] and not handle.asynchronous


def sources() -> list[torch.Tensor]:
    """Tensors of 0 to 9 bytes, of kinds whose bytes are easy to get wrong (all ones, NaN, bytes Gloo cannot reduce)."""
    return [
        torch.tensor(2.5),
        torch.tensor([-1], dtype=torch.int64),
        torch.tensor([True, False, True]),
        torch.tensor([1.0, -2.0, 3.5, 65504.0], dtype=torch.float16),
        torch.tensor(1 - 2j, dtype=torch.complex64),
        torch.tensor([7, 65535], dtype=torch.uint16),
        torch.tensor(float("nan"), dtype=torch.float64),
        torch.tensor([0.5], dtype=torch.bfloat16),
        torch.arange(9, dtype=torch.uint8),  # one byte too many: the check, then a broadcast
        torch.empty(0),
    ]


def strided(value: torch.Tensor) -> torch.Tensor:
    """``value``'s values in a view with a stride of 2 (a one-element one counts as contiguous to torch)."""
    spread = torch.zeros(2 * max(value.numel(), 1), dtype=value.dtype)
    spread[::2][: value.numel()] = value.reshape(-1)
    return spread[::2][: value.numel()].reshape(value.shape)


def bytes_of(tensor: torch.Tensor) -> list[int]:
    return tensor.detach().resolve_neg().reshape(-1).clone(memory_format=torch.contiguous_format).view(torch.uint8).tolist()


def scalar_broadcasts(comm, bitwise: bool) -> list[Any]:
    """Every source tensor from rank 0 and from rank 1, into zeros, a strided view, a negated view
    and a Parameter on the others; each result's bytes and the collectives it took."""
    from distcomm.backends.torch_dist import TorchDistBackend

    steps: list[str] = []

    class Counting(TorchDistBackend):
        def ands_bits(self, device):
            return bitwise and super().ands_bits(device)

        def all_reduce(self, tensor, op):
            steps.append(f"all_reduce {op.value}")
            super().all_reduce(tensor, op)

        def all_reduce_bitwise_and(self, tensor):
            steps.append("all_reduce and")
            super().all_reduce_bitwise_and(tensor)

        def broadcast(self, tensor, src):
            steps.append("broadcast")
            super().broadcast(tensor, src)

    c = BackendCommunicator(Counting())
    seen = []
    for src in (0, 1):
        for index, value in enumerate(sources()):
            if c.rank == src:
                mine = strided(value) if index % 2 else torch._neg_view(-value) if value.is_floating_point() else value.clone()
                if index % 4 == 0 and (value.is_floating_point() or value.is_complex()):
                    mine = torch.nn.Parameter(value.clone())  # a source that requires grad
            elif index % 3 == 1 and value.numel():
                mine = strided(torch.zeros_like(value))
            elif index % 3 == 2:
                mine = torch.nn.Parameter(torch.zeros_like(value), requires_grad=value.is_floating_point() or value.is_complex())
            else:
                mine = torch.zeros_like(value)
            steps.clear()
            returned = c.broadcast(mine, src)
            assert returned is mine
            seen.append((bytes_of(mine), bytes_of(value), list(steps)))
    try:  # a source scalar against a two-element tensor: one call in two forms
        c.broadcast(torch.ones(1 if c.rank == 0 else 2), 0)
        seen.append("returned")
    except InconsistentInputError as error:
        seen.append(str(error))
    seen.append(c.all_reduce(torch.ones(1)).item())  # still in step
    return seen


@pytest.mark.parametrize("bitwise", [True, False], ids=["carried (Gloo)", "no bitwise AND (as NCCL)"])
def test_a_scalar_broadcast_is_one_collective_where_the_check_can_carry_it(dist_world, bitwise: bool) -> None:
    per_rank = dist_world(2).run(scalar_broadcasts, bitwise)
    check = "all_reduce and" if bitwise else "all_reduce max"
    for seen in per_rank:
        for (got, sent, steps), value in zip(seen[:-2], sources() * 2):
            assert got == sent, (value, got, sent)  # the source's bytes, NaN and all ones included
            carried = bitwise and value.numel() * value.element_size() <= 8
            assert steps == ([check] if carried else [check, "broadcast"]), (value, steps)
        assert "broadcast from 0" in seen[-2] and "float32[1]" in seen[-2] and "float32[2]" in seen[-2]
        assert seen[-1] == 2.0
    assert per_rank[0][-2] == per_rank[1][-2]  # the same words on every rank
