"""``LocalCommunicator``: a world of one process, with no process group at all."""

from __future__ import annotations

import torch

from distcomm.communicator import Communicator
from distcomm.ops import ReduceOp


class LocalCommunicator(Communicator):
    """A single-process world: rank 0 of 1.

    It returns exactly what :class:`~distcomm.TorchDistCommunicator` returns over a
    group of one rank (the same types, dtypes, shapes, and the same in-place or new
    objects), so a trainer tested with it behaves the same on many ranks. Objects in
    object collectives still go through pickle, so an unpicklable object fails here
    too, not first on the cluster.
    """

    # Plain class attributes rather than properties: read on every hot-path call.
    rank = 0
    world_size = 1
    local_rank = 0

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self._device = torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def backend(self) -> str:
        return "local"

    def _barrier(self) -> None:
        pass

    def _broadcast_tensor(self, tensor: torch.Tensor, src: int) -> None:
        pass  # the only rank is the source

    def _all_reduce_tensor(self, tensor: torch.Tensor, op: ReduceOp) -> None:
        pass  # every reduction of one value is that value

    def _all_gather_tensor(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor.clone()]

    def _accepts_device(self, device: torch.device) -> bool:
        return device.type != "meta"  # a meta tensor has no data: refused as on every backend

    def _split(self, members: list[int]) -> Communicator | None:
        child = LocalCommunicator(self._device)
        child.object_codec = self.object_codec
        return child

    def _close(self) -> None:
        pass
