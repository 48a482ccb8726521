"""``TorchDistCommunicator``: the real communicator, over a torch.distributed process group."""

from __future__ import annotations

import datetime
import logging
import os
import weakref
from typing import Any

import torch
import torch.distributed as dist

from distcomm.backend import Backend
from distcomm.backend_choice import BACKENDS, backend_available, default_backend
from distcomm.communicator import Communicator
from distcomm.devices import nccl_device
from distcomm.errors import CollectiveError, ConfigurationError, DistCommError, InvalidArgumentError, call_torch
from distcomm.handles import Handle, JoinedHandle, WorkHandle
from distcomm.job_environment import identity_from_environment, local_rank_from_environment
from distcomm.ops import TO_TORCH, ReduceOp
from distcomm.timeouts import DEFAULT_TIMEOUT, as_timeout

logger = logging.getLogger(__name__)

if dist.is_available() and not dist.is_initialized():
    # torch.distributed.nn.functional evaluates ``group=group.WORLD`` defaults when first
    # imported (torch._dynamo and FSDP import it, e.g. when an optimizer is created). Done
    # while a group exists, that pins the group past destroy_process_group, and Gloo then
    # aborts the process at exit ("terminate called without an active exception").
    # Importing it now, before any group exists, makes those defaults None.
    import torch.distributed.nn.functional  # noqa: F401

_ENV_RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")

# Gloo rejects these dtypes. Reductions carry them as the next wider integer; broadcasts
# and gathers, which only copy, carry their bytes (exact for every dtype, uint64 too).
_GLOO_WIDER = {torch.int16: torch.int32, torch.uint16: torch.int32, torch.uint32: torch.int64}
_GLOO_AS_BYTES = frozenset({torch.int16, torch.uint16, torch.uint32, torch.uint64})

_gather_into_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
"""Gather into one flat tensor (``all_gather_single`` in new torch, ``all_gather_into_tensor`` before)."""
_reduce_scatter_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
"""Reduce-scatter one flat tensor (``reduce_scatter_single`` in new torch, ``reduce_scatter_tensor`` before)."""


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
        carrier = tensor if raw is None else raw
        call_torch("broadcast", self.rank, dist.broadcast, carrier, self._global_ranks[src], group=self._group)

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp) -> None:
        if self._gloo and tensor.dtype in _GLOO_WIDER:
            carrier = tensor.to(_GLOO_WIDER[tensor.dtype])
            call_torch("all_reduce", self.rank, dist.all_reduce, carrier, TO_TORCH[op], group=self._group)
            tensor.copy_(carrier)
            return
        try:  # call_torch's work, written out on the hottest path of all to save a call
            dist.all_reduce(tensor, TO_TORCH[op], self._group)
        except RuntimeError as error:
            raise CollectiveError("all_reduce", self.rank, error) from error

    def _gather_buffers(self, tensor: torch.Tensor, out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What to send, where it lands (flat), and the caller's view of it: ``(world_size, *shape)``."""
        raw = self._as_bytes(tensor)
        send = (tensor if raw is None else raw).reshape(-1)
        if out is not None:
            return send, out.view(-1) if raw is None else out.view(-1).view(torch.uint8), out
        landing = torch.empty(self.world_size * send.numel(), dtype=send.dtype, device=send.device)
        view = landing.view(self.world_size, -1)
        if raw is not None:
            view = view.view(tensor.dtype)
        return send, landing, view.reshape(self.world_size, *tensor.shape)

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
        carrier = tensor if raw is None else raw
        work = call_torch(
            "broadcast", self.rank, dist.broadcast, carrier, self._global_ranks[src], group=self._group, async_op=True
        )
        return WorkHandle(work, tensor, "broadcast", self.rank)

    def all_gather_async(self, tensor: torch.Tensor, out: torch.Tensor | None = None) -> Handle:
        send, out, result = self._gather_buffers(tensor, out)
        work = call_torch("all_gather", self.rank, _gather_into_tensor, out, send, group=self._group, async_op=True)
        return WorkHandle(work, result, "all_gather", self.rank)

    def reduce_scatter(self, output: torch.Tensor, tensor: torch.Tensor, op: ReduceOp) -> None:
        if self._gloo and tensor.dtype in _GLOO_WIDER:
            landing = output.to(_GLOO_WIDER[tensor.dtype])
            call_torch("reduce_scatter", self.rank, _reduce_scatter_tensor, landing, tensor.to(landing.dtype), TO_TORCH[op], group=self._group)
            output.copy_(landing)
            return
        call_torch("reduce_scatter", self.rank, _reduce_scatter_tensor, output, tensor, TO_TORCH[op], group=self._group)

    def all_to_all(self, output: torch.Tensor, tensor: torch.Tensor, output_sizes: list[int], input_sizes: list[int]) -> None:
        call_torch("all_to_all", self.rank, dist.all_to_all_single, output, tensor, output_sizes, input_sizes, group=self._group)

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

    def split(self, members: list[int]) -> Backend | None:
        global_ranks = [self._global_ranks[m] for m in members]
        # From the default group every rank calls new_group; from a subgroup only its
        # ranks do, which needs torch's group-local synchronization.
        local_sync = self._group is not dist.group.WORLD
        if local_sync:
            self._align_group_names(members)
        group = call_torch("split", self.rank, dist.new_group, global_ranks, use_local_synchronization=local_sync)
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
        device_mesh = call_torch("mesh", self.rank, init_device_mesh, device_type, shape, mesh_dim_names=names)
        return device_mesh, [TorchDistBackend(device_mesh.get_group(name), local_rank=self.local_rank) for name in names]

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            logger.debug("destroyed the default process group")
        # Keep no reference: a destroyed group that lives on until interpreter exit can
        # abort the process there, when its threads are torn down out of order.
        self._group = None


class TorchDistCommunicator(Communicator):
    """A communicator over a ``torch.distributed`` process group (Gloo, NCCL or MPI).

    ``TorchDistCommunicator()`` wraps the default group, which must already exist;
    ``TorchDistCommunicator(group=g)`` wraps ``g``; :meth:`init` creates the default
    group and returns a communicator that destroys it on :meth:`close`.

    Data that is not a tensor travels on :attr:`device` (the current CUDA device for
    NCCL, the CPU otherwise), and results come back where the input lived.
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        *,
        local_rank: int | None = None,
        _owns_group: bool = False,
    ) -> None:
        self._opening = (group, local_rank, _owns_group)
        super().__init__()

    def _open_backend(self) -> Backend:
        group, local_rank, owns_group = self._opening
        return TorchDistBackend(group, local_rank=local_rank, owns_group=owns_group)

    @classmethod
    def init(
        cls,
        backend: str | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        init_method: str = "env://",
        timeout: datetime.timedelta | float = DEFAULT_TIMEOUT,
        local_rank: int | None = None,
    ) -> TorchDistCommunicator:
        """Create the default process group and a communicator that owns it.

        ``rank`` and ``world_size`` default to what the launcher exported (torchrun's
        ``RANK``/``WORLD_SIZE``, SLURM's and LSF's equivalents). ``timeout`` (seconds
        or a timedelta) bounds every collective. With NCCL the process is bound to GPU
        ``local_rank`` first, so no collective has to guess it.
        """
        backend = (backend or default_backend()).lower()
        if backend not in BACKENDS:
            raise InvalidArgumentError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
        if not backend_available(backend):
            raise InvalidArgumentError(f"backend {backend!r} is not available in this build of torch")
        if rank is None or world_size is None:
            found_rank, found_size = identity_from_environment()
            rank = found_rank if rank is None else rank
            world_size = found_size if world_size is None else world_size
        for name, value in (("rank", rank), ("world_size", world_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgumentError(f"{name} must be an int, got {value!r}")
        if world_size < 1:
            raise InvalidArgumentError(f"world_size must be at least 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise InvalidArgumentError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if dist.is_initialized():
            raise DistCommError(
                "the default process group already exists: wrap it with TorchDistCommunicator() instead"
            )
        if init_method == "env://":
            missing = [name for name in _ENV_RENDEZVOUS_VARIABLES if not os.environ.get(name)]
            if missing:
                raise ConfigurationError(
                    f"the env:// rendezvous needs {' and '.join(missing)}, which no launcher set: start the job "
                    "with torchrun, or export them, or pass init_method='tcp://HOST:PORT' or 'file:///path'"
                )
        timeout = as_timeout(timeout)
        launched = os.environ.get("WORLD_SIZE", "").strip()
        if init_method.startswith("env:") and launched.isdigit() and int(launched) != world_size:
            raise ConfigurationError(
                f"the launcher started WORLD_SIZE={launched} processes but world_size={world_size} was asked "
                "for: make them agree (or leave world_size out to take the launcher's)"
            )
        check_rendezvous_file(init_method)
        local_rank = local_rank if local_rank is not None else local_rank_from_environment(rank)
        device_id = None
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise InvalidArgumentError("backend 'nccl' needs CUDA, and none is available: use 'gloo'")
            device_id = nccl_device(local_rank, torch.cuda.device_count())
            torch.cuda.set_device(device_id)
        init: dict[str, Any] = {"init_method": init_method, "rank": rank, "world_size": world_size, "timeout": timeout}
        try:
            call_torch("init_process_group", rank, dist.init_process_group, backend, device_id=device_id, **init)
        except ValueError as error:  # torch's word for a rendezvous it cannot read
            raise ConfigurationError(f"init_process_group failed on rank {rank}: {error}") from error
        logger.debug("initialized %s process group: rank %d of %d", backend, rank, world_size)
        comm = cls(local_rank=local_rank, _owns_group=True)
        global _owner
        _owner = weakref.ref(comm)
        return comm


_owner: weakref.ReferenceType[TorchDistCommunicator] | None = None
"""The communicator that :meth:`TorchDistCommunicator.init` made with the default group."""


def owner_of_default_group() -> TorchDistCommunicator | None:
    """The communicator that created the current default group, while it is open (``None`` else):
    code that follows the default group talks through it, with its hooks and codec."""
    owner = _owner() if _owner is not None else None
    if owner is None or owner.closed or not (dist.is_available() and dist.is_initialized()) or owner.group is not dist.group.WORLD:
        return None
    return owner


def check_rendezvous_file(init_method: str) -> None:
    """Refuse a ``file://`` rendezvous whose directory does not exist: torch would wait for the
    file until long past the timeout."""
    if init_method.startswith("file://"):
        directory = os.path.dirname(init_method.removeprefix("file://").split("?")[0]) or "."
        if not os.path.isdir(directory):
            raise ConfigurationError(
                f"the rendezvous file {init_method} is in {directory}, which does not exist: create it (on a "
                "file system every rank reaches), or pass another init_method"
            )
