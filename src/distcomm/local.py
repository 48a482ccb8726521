"""``LocalCommunicator``: a world of one process, with no process group at all."""

from __future__ import annotations

import torch

from distcomm.backends.backend import Backend
from distcomm.backends.local import LocalBackend
from distcomm.communicator import Communicator


class LocalCommunicator(Communicator):
    """A single-process world: rank 0 of 1.

    It returns exactly what :class:`~distcomm.TorchDistCommunicator` returns over a
    group of one rank (the same types, dtypes, shapes, and the same in-place or new
    objects), because both are the same :class:`~distcomm.Communicator` over different
    backends. Objects in object collectives still go through pickle, so an unpicklable
    object fails here too, not first on the cluster.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self._home = torch.device(device)
        super().__init__()

    def _open_backend(self) -> Backend:
        return LocalBackend(self._home)
