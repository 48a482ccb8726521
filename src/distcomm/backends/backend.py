"""The small interface a communicator runs on: identity and a handful of tensor primitives.

A :class:`Backend` moves tensors and nothing else: it knows no Python numbers, nested
data, objects or reduction rules. Those are given their meaning once, for every
backend, by :class:`~distcomm.Communicator`. Adding a transport (another library, a
simulated world) means writing these few methods.

Tested through every collective over both backends (tests/test_communicator.py) and a third transport (tests/support/transports.py, tests/instrument/test_hooks.py).
"""

from __future__ import annotations

import abc
import datetime
from typing import Any

import torch

from distcomm.backends.handles import CompletedHandle, Handle
from distcomm.errors import InvalidArgumentError
from distcomm.values.mesh import groups_along
from distcomm.values.ops import ReduceOp


class Backend(abc.ABC):
    """Identity and tensor primitives of one group of ranks.

    Tensors given to the primitives are contiguous and on a device that
    :meth:`accepts`; the communicator makes sure of it.
    """

    name: str
    """``"gloo"``, ``"nccl"``, ``"mpi"`` or ``"local"``."""
    rank: int
    world_size: int
    local_rank: int

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where data that is not a tensor travels."""

    @property
    def timeout(self) -> datetime.timedelta | None:
        """How long a collective may take before it fails (``None``: not known)."""
        return None

    @property
    def group(self) -> Any:
        """The torch.distributed process group, for backends that have one."""
        return None

    @property
    def store(self) -> Any:
        """The job's key-value store, where survivors agree after a rank died (``None``: none)."""
        return None

    def group_count(self) -> int:
        """How many process groups this process holds (a note for :meth:`survivors`; 0 where it does not matter)."""
        return 0

    def survivors(self, members: list[int], notes: list[str], timeout: datetime.timedelta) -> Backend:
        """A backend over ``members`` (this group's ranks, sorted; this rank among them), made without
        the broken group: only the members call it. ``notes`` are what each noted when arriving.
        It fails within ``timeout`` when a member does not come (it died meanwhile)."""
        raise InvalidArgumentError(f"the {self.name} backend cannot shrink: it has no way to make a group of survivors")

    def new_world(self, store: Any, rank: int, world_size: int, timeout: datetime.timedelta) -> Backend:
        """A backend over a new world of ``world_size`` processes met in ``store`` (this one is
        ``rank``), replacing this process's default group: how live ranks take in newcomers
        (:mod:`distcomm.wire.rejoin`). It fails within ``timeout`` when a member does not come."""
        raise InvalidArgumentError(f"the {self.name} backend cannot take in new ranks")

    @abc.abstractmethod
    def accepts(self, device: torch.device) -> bool:
        """Whether tensors on ``device`` can be passed to the primitives as they are (the answer
        may depend only on ``device.type``: communicators ask once per type)."""

    @abc.abstractmethod
    def barrier(self) -> None:
        """Block until every rank arrives."""

    @abc.abstractmethod
    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        """Fill ``tensor`` in place with ``src``'s tensor."""

    @abc.abstractmethod
    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp) -> None:
        """Reduce ``tensor`` in place (``op`` is never ``MEAN``)."""

    def ands_bits(self, device: torch.device) -> bool:
        """Whether :meth:`all_reduce_bitwise_and` works on tensors on ``device`` (the call check
        then carries a few bytes of data beside itself: :mod:`distcomm.wire.call_check`)."""
        return False

    def all_reduce_bitwise_and(self, tensor: torch.Tensor) -> None:
        """The bitwise AND of an int64 ``tensor`` over all ranks, in place (where :meth:`ands_bits`)."""
        raise InvalidArgumentError(f"the {self.name} backend has no bitwise AND")

    @abc.abstractmethod
    def all_gather(self, tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """A tensor of shape ``(world_size, *tensor.shape)``: every rank's tensor, in rank order
        (every rank passes the same shape and dtype). It is ``out`` when given (contiguous, of
        that shape, dtype and device), else a new tensor."""

    def all_gather_uneven(self, tensor: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
        """Every rank's tensor when shapes differ (``shapes``, known to all): pad, gather, trim."""
        longest = max(shape.numel() for shape in shapes)
        flat = tensor.reshape(-1)
        if tensor.numel() < longest:
            flat = torch.cat([flat, flat.new_zeros(longest - tensor.numel())])
        gathered = self.all_gather(flat)
        return [row[: shape.numel()].reshape(shape) for row, shape in zip(gathered, shapes)]

    def all_reduce_async(self, tensor: torch.Tensor, op: ReduceOp) -> Handle:
        """Start an in-place reduction; the handle's ``wait()`` returns ``tensor``."""
        self.all_reduce(tensor, op)
        return CompletedHandle(tensor)

    def broadcast_async(self, tensor: torch.Tensor, src: int) -> Handle:
        """Start an in-place broadcast; the handle's ``wait()`` returns ``tensor``."""
        self.broadcast(tensor, src)
        return CompletedHandle(tensor)

    def all_gather_async(self, tensor: torch.Tensor, out: torch.Tensor | None = None) -> Handle:
        """Start an equal-shape gather; the handle's ``wait()`` returns the ``(world_size, ...)`` tensor."""
        return CompletedHandle(self.all_gather(tensor, out))

    def reduce_scatter(self, output: torch.Tensor, tensor: torch.Tensor, op: ReduceOp) -> None:
        """Reduce ``tensor`` (flat: ``world_size`` equal parts, part i for rank i) over all ranks and
        fill ``output`` with this rank's part (``op`` is never ``MEAN``). Here: an all_reduce of a copy."""
        reduced = tensor.clone()
        self.all_reduce(reduced, op)
        output.copy_(reduced.view(self.world_size, -1)[self.rank])

    @abc.abstractmethod
    def all_to_all(self, output: torch.Tensor, tensor: torch.Tensor, output_sizes: list[int], input_sizes: list[int]) -> None:
        """Send ``tensor``'s i-th run of ``input_sizes[i]`` elements to rank i, and receive rank
        j's run of ``output_sizes[j]`` elements into ``output`` (both flat; sizes known to all)."""

    def reduce_scatter_async(self, output: torch.Tensor, tensor: torch.Tensor, op: ReduceOp) -> Handle:
        """Start :meth:`reduce_scatter`; the handle's ``wait()`` returns ``output``."""
        self.reduce_scatter(output, tensor, op)
        return CompletedHandle(output)

    def all_to_all_async(self, output: torch.Tensor, tensor: torch.Tensor, output_sizes: list[int], input_sizes: list[int]) -> Handle:
        """Start :meth:`all_to_all`; the handle's ``wait()`` returns ``output``."""
        self.all_to_all(output, tensor, output_sizes, input_sizes)
        return CompletedHandle(output)

    @abc.abstractmethod
    def start_pairs(self, sends: list[tuple[torch.Tensor, int]], receives: list[tuple[torch.Tensor, int]]) -> Handle:
        """Start sending each ``(tensor, peer)`` of ``sends`` and filling each ``(tensor, peer)`` of
        ``receives`` from its peer, all at once (a peer is never this rank; messages between two
        ranks arrive in the order they were started); the handle's ``wait()`` returns when all are done."""

    @abc.abstractmethod
    def split(self, members: list[int], timeout: datetime.timedelta | None = None) -> Backend | None:
        """A backend over ``members`` (sorted, valid; every rank calls it) for members, ``None`` for others,
        whose collectives may take ``timeout`` (``None``: as long as this backend's)."""

    def mesh(self, shape: tuple[int, ...], names: tuple[str, ...]) -> tuple[Any, list[Backend]]:
        """A backend per dimension of a row-major grid of ``shape`` (every rank calls it), for the
        group along that dimension that holds this rank; and the torch ``DeviceMesh`` behind them,
        where one is made (here: none; groups by :meth:`split`, in the same order on every rank)."""
        mine: list[Backend] = []
        for dim in range(len(shape)):
            for members in groups_along(shape, dim):
                backend = self.split(members)
                if backend is not None:
                    mine.append(backend)
        return None, mine

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the backend holds (called once)."""
