"""``TorchDistBackend``: the tensor primitives over a torch.distributed process group (Gloo,
NCCL or MPI), which :class:`~distcomm.TorchDistCommunicator` gives its meaning.

Tested through every collective on real Gloo ranks (tests/test_communicator.py,
tests/test_torch_dist.py, tests/test_exchange_collectives.py).
"""

from __future__ import annotations

import atexit
import datetime
import logging
from typing import Any

import torch
import torch.distributed as dist

from distcomm.backends.backend import Backend
from distcomm.backends.handles import Handle, JoinedHandle, WorkHandle
from distcomm.environment.job import local_rank_from_environment
from distcomm.errors import CollectiveError, DistCommError, InvalidArgumentError, call_torch
from distcomm.values.ops import TO_TORCH, ReduceOp

logger = logging.getLogger(__name__)

# Gloo rejects these dtypes. Reductions carry them as the next wider integer; broadcasts
# and gathers, which only copy, carry their bytes (exact for every dtype, uint64 too).
_GLOO_WIDER = {torch.int16: torch.int32, torch.uint16: torch.int32, torch.uint32: torch.int64}
_GLOO_AS_BYTES = frozenset({torch.int16, torch.uint16, torch.uint32, torch.uint64})

_gather_into_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
"""Gather into one flat tensor (``all_gather_single`` in new torch, ``all_gather_into_tensor`` before)."""
_reduce_scatter_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
"""Reduce-scatter one flat tensor (``reduce_scatter_single`` in new torch, ``reduce_scatter_tensor`` before)."""
_PAIR_AND_TAG = 0x64636B
"""The point-to-point tag of the AND of two Gloo ranks (distcomm's own sends and receives use tag 0)."""


class TorchDistBackend(Backend):
    """The primitives over a torch.distributed process group (Gloo, NCCL or MPI)."""

    def __init__(self, group: dist.ProcessGroup | None = None, *, local_rank: int | None = None, owns_group: bool = False) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise DistCommError(
                "torch.distributed has no default process group: create one with "
                "TorchDistCommunicator.init(...) or torch.distributed.init_process_group(...), "
                "or use LocalCommunicator() for a single process"
            )
        self._group: dist.ProcessGroup | None = group if group is not None else dist.group.WORLD
        rank = dist.get_rank(self._group)
        if rank < 0:
            raise InvalidArgumentError(
                "this process is not a member of the given group: only members may wrap it "
                "(split() returns None on the others)"
            )
        self.rank = rank
        self.world_size = dist.get_world_size(self._group)
        self._global_ranks = dist.get_process_group_ranks(self._group)
        self.name = str(dist.get_backend(self._group)).lower()
        self.local_rank = local_rank if local_rank is not None else local_rank_from_environment(rank)
        self._owns_group = owns_group
        self._cuda = self.name == "nccl"
        self._gloo = self.name == "gloo"
        self._bound_device: torch.device | None = None
        self._pair_peer = self._global_ranks[1 - rank] if self._gloo and self.world_size == 2 else None
        """The other rank of two Gloo ranks, with which an AND is one exchange; else ``None``."""

    # ------------------------------------------------------------------ identity

    @property
    def device(self) -> torch.device:
        if self._cuda:
            return self._cuda_device()
        return torch.device("cpu")

    def _cuda_device(self) -> torch.device:
        """The group's bound GPU, else this process's GPU by local rank (never a guess of cuda:0)."""
        if self._bound_device is None:
            bound = getattr(self._group, "bound_device_id", None)
            self._bound_device = bound if bound is not None else torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return self._bound_device

    @property
    def timeout(self) -> datetime.timedelta | None:
        try:
            device = torch.device("cuda" if self._cuda else "cpu")
            value = self._group._get_backend(device).options._timeout  # type: ignore[union-attr]
        except (AttributeError, RuntimeError, TypeError):
            return None
        return value if isinstance(value, datetime.timedelta) and value.total_seconds() > 0 else None

    @property
    def group(self) -> dist.ProcessGroup | None:
        return self._group

    def accepts(self, device: torch.device) -> bool:
        if self._gloo:
            return device.type in ("cpu", "cuda")
        if self._cuda:
            return device.type == "cuda"
        return device.type == "cpu"

    # ---------------------------------------------------------------- primitives

    def _as_bytes(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """A flat byte view of ``tensor`` when this backend cannot copy its dtype as it is."""
        if self._gloo and tensor.dtype in _GLOO_AS_BYTES:
            return tensor.reshape(-1).view(torch.uint8)
        return None

    def barrier(self) -> None:
        if self._cuda:
            call_torch("barrier", self.rank, dist.barrier, group=self._group, device_ids=[self._cuda_device().index])
        else:
            call_torch("barrier", self.rank, dist.barrier, group=self._group)

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        raw = self._as_bytes(tensor)
        buffer = tensor if raw is None else raw
        call_torch("broadcast", self.rank, dist.broadcast, buffer, self._global_ranks[src], group=self._group)

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp) -> None:
        if self._gloo and tensor.dtype in _GLOO_WIDER:
            buffer = tensor.to(_GLOO_WIDER[tensor.dtype])
            call_torch("all_reduce", self.rank, dist.all_reduce, buffer, TO_TORCH[op], group=self._group)
            tensor.copy_(buffer)
            return
        try:  # call_torch's work, written out on the hottest path of all to save a call
            dist.all_reduce(tensor, TO_TORCH[op], self._group)
        except RuntimeError as error:
            raise CollectiveError("all_reduce", self.rank, error) from error

    def ands_bits(self, device: torch.device) -> bool:
        return device.type == "cpu" and (self._gloo or self.name == "mpi")  # NCCL has no bitwise ops

    def all_reduce_bitwise_and(self, tensor: torch.Tensor) -> None:
        try:
            if self._pair_peer is None:
                dist.all_reduce(tensor, dist.ReduceOp.BAND, self._group)
                return
            # Two Gloo ranks: each sends its words and ANDs in the other's. One round, where Gloo's
            # ring all-reduce takes two (a reduce-scatter, then an all-gather), on a tag of its own.
            received = torch.empty_like(tensor)
            works = (
                dist.isend(tensor, self._pair_peer, self._group, _PAIR_AND_TAG),
                dist.irecv(received, self._pair_peer, self._group, _PAIR_AND_TAG),
            )
            for work in works:
                if work is None:  # torch's answer to a rank outside the group, which this one is not
                    raise AssertionError("torch.distributed took this rank for a stranger to its own group")
                work.wait()
            tensor.bitwise_and_(received)
        except RuntimeError as error:
            raise CollectiveError("all_reduce", self.rank, error) from error

    def _gather_buffers(self, tensor: torch.Tensor, out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What to send, where it lands (flat), and the caller's view of it: ``(world_size, *shape)``."""
        raw = self._as_bytes(tensor)
        send = (tensor if raw is None else raw).reshape(-1)
        if out is not None:
            return send, out.view(-1) if raw is None else out.view(-1).view(torch.uint8), out
        received = torch.empty(self.world_size * send.numel(), dtype=send.dtype, device=send.device)
        view = received.view(self.world_size, -1)
        if raw is not None:
            view = view.view(tensor.dtype)
        return send, received, view.reshape(self.world_size, *tensor.shape)

    def all_gather(self, tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        send, out, result = self._gather_buffers(tensor, out)
        call_torch("all_gather", self.rank, _gather_into_tensor, out, send, group=self._group)
        return result

    def all_gather_uneven(self, tensor: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
        if not self._cuda:
            return super().all_gather_uneven(tensor, shapes)
        out = [torch.empty(shape, dtype=tensor.dtype, device=tensor.device) for shape in shapes]
        call_torch("all_gather", self.rank, dist.all_gather, out, tensor, group=self._group)
        return out

    def all_reduce_async(self, tensor: torch.Tensor, op: ReduceOp) -> Handle:
        if self._gloo and tensor.dtype in _GLOO_WIDER:
            return super().all_reduce_async(tensor, op)
        work = call_torch("all_reduce", self.rank, dist.all_reduce, tensor, TO_TORCH[op], group=self._group, async_op=True)
        return WorkHandle(work, tensor, "all_reduce", self.rank)

    def broadcast_async(self, tensor: torch.Tensor, src: int) -> Handle:
        raw = self._as_bytes(tensor)
        buffer = tensor if raw is None else raw
        work = call_torch(
            "broadcast", self.rank, dist.broadcast, buffer, self._global_ranks[src], group=self._group, async_op=True
        )
        return WorkHandle(work, tensor, "broadcast", self.rank)

    def all_gather_async(self, tensor: torch.Tensor, out: torch.Tensor | None = None) -> Handle:
        send, out, result = self._gather_buffers(tensor, out)
        work = call_torch("all_gather", self.rank, _gather_into_tensor, out, send, group=self._group, async_op=True)
        return WorkHandle(work, result, "all_gather", self.rank)

    def reduce_scatter(self, output: torch.Tensor, tensor: torch.Tensor, op: ReduceOp) -> None:
        if self._gloo and tensor.dtype in _GLOO_WIDER:
            received = output.to(_GLOO_WIDER[tensor.dtype])
            call_torch("reduce_scatter", self.rank, _reduce_scatter_tensor, received, tensor.to(received.dtype), TO_TORCH[op], group=self._group)
            output.copy_(received)
            return
        call_torch("reduce_scatter", self.rank, _reduce_scatter_tensor, output, tensor, TO_TORCH[op], group=self._group)

    def reduce_scatter_async(self, output: torch.Tensor, tensor: torch.Tensor, op: ReduceOp) -> Handle:
        if self._gloo and tensor.dtype in _GLOO_WIDER:
            return super().reduce_scatter_async(output, tensor, op)
        work = call_torch("reduce_scatter", self.rank, _reduce_scatter_tensor, output, tensor, TO_TORCH[op], group=self._group, async_op=True)
        return WorkHandle(work, output, "reduce_scatter", self.rank)

    def all_to_all(self, output: torch.Tensor, tensor: torch.Tensor, output_sizes: list[int], input_sizes: list[int]) -> None:
        call_torch("all_to_all", self.rank, dist.all_to_all_single, output, tensor, output_sizes, input_sizes, group=self._group)

    def all_to_all_async(self, output: torch.Tensor, tensor: torch.Tensor, output_sizes: list[int], input_sizes: list[int]) -> Handle:
        work = call_torch(
            "all_to_all", self.rank, dist.all_to_all_single, output, tensor, output_sizes, input_sizes, group=self._group, async_op=True
        )
        return WorkHandle(work, output, "all_to_all", self.rank)

    def start_pairs(self, sends: list[tuple[torch.Tensor, int]], receives: list[tuple[torch.Tensor, int]]) -> Handle:
        ranks = self._global_ranks
        if not self._cuda:  # Gloo and MPI run each send and receive on its own: no batch needed, none paid for
            works = [call_torch("send", self.rank, dist.isend, tensor, ranks[peer], group=self._group) for tensor, peer in sends]
            works += [call_torch("recv", self.rank, dist.irecv, tensor, ranks[peer], group=self._group) for tensor, peer in receives]
        else:  # NCCL must start a ring's sends and receives together
            operations = [dist.P2POp(dist.isend, tensor, ranks[peer], group=self._group) for tensor, peer in sends]
            operations += [dist.P2POp(dist.irecv, tensor, ranks[peer], group=self._group) for tensor, peer in receives]
            works = call_torch("send/recv", self.rank, dist.batch_isend_irecv, operations) if operations else []  # type: ignore[arg-type]
        return JoinedHandle([WorkHandle(work, None, "send/recv", self.rank) for work in works])

    def split(self, members: list[int], timeout: datetime.timedelta | None = None) -> Backend | None:
        global_ranks = [self._global_ranks[m] for m in members]
        # From the default group every rank calls new_group; from a subgroup only its
        # ranks do, which needs torch's group-local synchronization.
        local_sync = self._group is not dist.group.WORLD
        if local_sync:
            self._align_group_names(members)
        group = call_torch(
            "split", self.rank, dist.new_group, global_ranks, timeout=timeout or self.timeout, use_local_synchronization=local_sync
        )
        if self.rank not in members:
            return None
        return TorchDistBackend(group, local_rank=self.local_rank)

    @property
    def store(self) -> Any:
        try:
            return dist.distributed_c10d._get_default_store()  # shared by every rank of every group
        except (AttributeError, RuntimeError, ValueError):
            return None

    def group_count(self) -> int:
        names = getattr(getattr(dist.distributed_c10d, "_world", None), "pg_names", None)
        return 0 if names is None else len(names)

    def survivors(self, members: list[int], notes: list[str], timeout: datetime.timedelta) -> Backend:
        """The survivors' group, made on a name of their own with group-local synchronization (the
        broken group is never used): the counts of groups they noted are aligned first, as for a split."""
        counts = [int(note) if note.isdigit() else 0 for note in notes]
        for _ in range(max(counts, default=0) - self.group_count()):
            call_torch("shrink", self.rank, dist.new_group, [self._global_ranks[self.rank]], use_local_synchronization=True)
        global_ranks = [self._global_ranks[m] for m in members]
        group = call_torch("shrink", self.rank, dist.new_group, global_ranks, timeout=timeout, use_local_synchronization=True)
        return TorchDistBackend(group, local_rank=self.local_rank)

    def new_world(self, store: Any, rank: int, world_size: int, timeout: datetime.timedelta) -> Backend:
        return form_default_group(self.name, store, rank, world_size, timeout, self.local_rank)

    def _align_group_names(self, members: list[int]) -> None:
        """Make torch give the members' new group one name. With group-local synchronization torch
        names a group from its ranks and the number of groups each process holds, which differs
        once ranks have been in different splits: then the members would wait for each other
        under different names until the timeout. Every rank of this group says how many it holds
        (one small all_gather); members that hold fewer make groups of their own alone until the
        numbers agree."""
        world = getattr(dist.distributed_c10d, "_world", None)
        names = getattr(world, "pg_names", None)
        if names is None:  # another torch: nothing to align
            return
        mine = torch.tensor([len(names)], dtype=torch.int64, device=self.device)
        counts = self.all_gather(mine).view(-1).tolist()
        target = max(counts[m] for m in members)
        if self.rank in members:
            me = [self._global_ranks[self.rank]]
            for _ in range(target - counts[self.rank]):
                call_torch("split", self.rank, dist.new_group, me, use_local_synchronization=True)

    def mesh(self, shape: tuple[int, ...], names: tuple[str, ...]) -> tuple[Any, list[Backend]]:
        if self._group is not dist.group.WORLD:  # a DeviceMesh spans the whole world
            return super().mesh(shape, names)
        from torch.distributed.device_mesh import init_device_mesh

        device_type = "cuda" if self._cuda else "cpu"
        # The dimensions' groups keep this group's timeout (torch would give them its 30-minute default).
        options = getattr(getattr(torch._C._distributed_c10d, "Backend", None), "Options", None)
        timeout = self.timeout
        override = None if timeout is None or options is None else {name: options(self.name, timeout) for name in names}
        device_mesh = call_torch(
            "mesh", self.rank, init_device_mesh, device_type, shape, mesh_dim_names=names, backend_override=override
        )
        return device_mesh, [TorchDistBackend(device_mesh.get_group(name), local_rank=self.local_rank) for name in names]

    def close(self) -> None:
        if self._owns_group and dist.is_initialized() and self._group is dist.group.WORLD:  # not a later world's
            dist.destroy_process_group()
            logger.debug("destroyed the default process group")
        # Keep no reference: a destroyed group that lives on until interpreter exit can
        # abort the process there, when its threads are torn down out of order.
        self._group = None


def form_default_group(
    backend: str, store: Any, rank: int, world_size: int, timeout: datetime.timedelta, local_rank: int
) -> TorchDistBackend:
    """A new default process group of ``world_size`` processes met in ``store``, this one ``rank``,
    in place of the one this process holds (destroyed first: a world that took in newcomers
    replaces the old one on every member). It has formed once every member connected: Gloo
    connects while it is made; other backends are asked for one small all-reduce."""
    if dist.is_initialized():
        dist.destroy_process_group()
    device_id = None
    if backend == "nccl":
        device_id = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device_id)
    call_torch(
        "admit", rank, dist.init_process_group, backend, store=store, rank=rank, world_size=world_size, timeout=timeout, device_id=device_id
    )
    _destroy_at_exit()
    formed = TorchDistBackend(local_rank=local_rank, owns_group=True)
    if backend != "gloo":
        call_torch("admit", rank, dist.all_reduce, torch.zeros(1, device=formed.device))
    return formed


_exit_registered = False


def _destroy_at_exit() -> None:
    """Destroy the default group when the process exits, where a later world made it: its
    communicator belongs to :class:`~distcomm.Resilient`, which nobody closes."""
    global _exit_registered
    if not _exit_registered:
        _exit_registered = True
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
