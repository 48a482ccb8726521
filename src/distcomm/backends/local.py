"""``LocalBackend``: the backend of a world of one process, with no process group at all (under
:class:`~distcomm.LocalCommunicator`)."""

from __future__ import annotations

import datetime

import torch

from distcomm.backends.backend import Backend
from distcomm.backends.handles import CompletedHandle, Handle
from distcomm.errors import InvalidArgumentError
from distcomm.values.ops import ReduceOp


class LocalBackend(Backend):
    """Rank 0 of 1: every primitive is the identity."""

    name = "local"
    rank = 0
    world_size = 1
    local_rank = 0

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self._device = torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    def accepts(self, device: torch.device) -> bool:
        return device.type != "meta"  # a meta tensor has no data: refused as on every backend

    def barrier(self) -> None:
        pass

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        pass  # the only rank is the source

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp) -> None:
        pass  # every reduction of one value is that value

    def all_gather(self, tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            return tensor.unsqueeze(0).clone()
        out[0].copy_(tensor)
        return out

    def reduce_scatter(self, output: torch.Tensor, tensor: torch.Tensor, op: ReduceOp) -> None:
        output.copy_(tensor)

    def all_to_all(self, output: torch.Tensor, tensor: torch.Tensor, output_sizes: list[int], input_sizes: list[int]) -> None:
        output.copy_(tensor)  # the only rank sends everything to itself

    def start_pairs(self, sends: list[tuple[torch.Tensor, int]], receives: list[tuple[torch.Tensor, int]]) -> Handle:
        if sends or receives:  # the communicator refuses a peer that is this rank before it gets here
            raise InvalidArgumentError("a world of one has no peer to send to or receive from")
        return CompletedHandle(None)

    def split(self, members: list[int], timeout: datetime.timedelta | None = None) -> Backend | None:
        return LocalBackend(self._device)

    def survivors(self, members: list[int], notes: list[str], timeout: datetime.timedelta) -> Backend:
        return LocalBackend(self._device)  # the only rank survives itself

    def close(self) -> None:
        pass
