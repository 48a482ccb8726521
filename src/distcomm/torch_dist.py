"""``TorchDistCommunicator``: the real communicator, over a torch.distributed process group."""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

from distcomm.communicator import Communicator, Handle
from distcomm.errors import CollectiveError, DistCommError, InvalidArgumentError
from distcomm.ops import TO_TORCH, ReduceOp

logger = logging.getLogger(__name__)

if dist.is_available() and not dist.is_initialized():
    # torch.distributed.nn.functional evaluates ``group=group.WORLD`` defaults when first
    # imported (torch._dynamo and FSDP import it, e.g. when an optimizer is created). Done
    # while a group exists, that pins the group past destroy_process_group, and Gloo then
    # aborts the process at exit ("terminate called without an active exception").
    # Importing it now, before any group exists, makes those defaults None.
    import torch.distributed.nn.functional  # noqa: F401

BACKENDS = ("gloo", "nccl", "mpi")
_LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")

# Gloo rejects these dtypes. Reductions carry them as the next wider integer; broadcasts
# and gathers, which only copy, carry their bytes (exact for every dtype, uint64 too).
_GLOO_WIDER = {torch.int16: torch.int32, torch.uint16: torch.int32, torch.uint32: torch.int64}
_GLOO_AS_BYTES = frozenset({torch.int16, torch.uint16, torch.uint32, torch.uint64})


def _all_gather_single(output: torch.Tensor, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> None:
    """Gather into one flat tensor (``all_gather_single`` in new torch, ``all_gather_into_tensor`` before)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, tensor, group=group)


def default_backend() -> str:
    """NCCL where CUDA is available, Gloo otherwise."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def backend_available(backend: str) -> bool:
    """Whether this build of torch has ``backend``."""
    checks = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available, "mpi": dist.is_mpi_available}
    return dist.is_available() and backend in checks and bool(checks[backend]())


def _as_timedelta(timeout: datetime.timedelta | float) -> datetime.timedelta:
    if isinstance(timeout, datetime.timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise InvalidArgumentError(f"timeout must be seconds or a timedelta, got {timeout!r}")
    if not seconds > 0:
        raise InvalidArgumentError(f"timeout must be positive, got {seconds} seconds")
    return datetime.timedelta(seconds=seconds)


class _MovedOnWait(list):  # type: ignore[type-arg]
    """Gathered tensors that go back to the input's device once the work is done."""

    def __init__(self, tensors: list[torch.Tensor], home: torch.device) -> None:
        super().__init__(tensors)
        self.home = home


class _WorkHandle(Handle):
    """A torch ``Work`` whose failure becomes a :class:`CollectiveError`."""

    def __init__(self, work: Any, result: Any, operation: str, rank: int) -> None:
        self._work = work
        self._result = result
        self._operation = operation
        self._rank = rank

    def wait(self) -> Any:
        try:
            self._work.wait()
        except DistCommError:
            raise
        except RuntimeError as error:
            raise CollectiveError(self._operation, self._rank, error) from error
        if isinstance(self._result, _MovedOnWait):
            return [t.to(self._result.home) for t in self._result]
        return self._result

    def is_completed(self) -> bool:
        return bool(self._work.is_completed())


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
        self._rank = rank
        self._world_size = dist.get_world_size(self._group)
        self._global_ranks = dist.get_process_group_ranks(self._group)
        self._backend = str(dist.get_backend(self._group)).lower()
        self._local_rank = local_rank if local_rank is not None else _local_rank_from_environment(rank)
        self._owns_group = _owns_group
        self._cuda = self._backend == "nccl"

    @classmethod
    def init(
        cls,
        backend: str | None = None,
        *,
        rank: int,
        world_size: int,
        init_method: str = "env://",
        timeout: datetime.timedelta | float = datetime.timedelta(minutes=30),
        local_rank: int | None = None,
    ) -> TorchDistCommunicator:
        """Create the default process group and a communicator that owns it.

        ``timeout`` (seconds or a timedelta) bounds every collective. With NCCL the
        process is bound to GPU ``local_rank`` first, so no collective has to guess it.
        """
        backend = (backend or default_backend()).lower()
        if backend not in BACKENDS:
            raise InvalidArgumentError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
        if not backend_available(backend):
            raise InvalidArgumentError(f"backend {backend!r} is not available in this build of torch")
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
        timeout = _as_timedelta(timeout)
        local_rank = local_rank if local_rank is not None else _local_rank_from_environment(rank)
        device_id = None
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise InvalidArgumentError("backend 'nccl' needs CUDA, and none is available: use 'gloo'")
            device_id = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device_id)
        try:
            dist.init_process_group(
                backend,
                init_method=init_method,
                rank=rank,
                world_size=world_size,
                timeout=timeout,
                device_id=device_id,
            )
        except (RuntimeError, ValueError) as error:
            raise CollectiveError("init_process_group", rank, error) from error
        logger.debug("initialized %s process group: rank %d of %d", backend, rank, world_size)
        return cls(local_rank=local_rank, _owns_group=True)

    # ------------------------------------------------------------------ identity

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def local_rank(self) -> int:
        return self._local_rank

    @property
    def device(self) -> torch.device:
        if self._cuda:
            return self._cuda_device()
        return torch.device("cpu")

    def _cuda_device(self) -> torch.device:
        """The group's bound GPU, else this process's GPU by local rank (never a guess of cuda:0)."""
        device = getattr(self, "_bound_device", None)
        if device is None:
            bound = getattr(self._group, "bound_device_id", None)
            device = bound if bound is not None else torch.device("cuda", self._local_rank % torch.cuda.device_count())
            self._bound_device = device
        return device

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def timeout(self) -> datetime.timedelta | None:
        """The group's timeout for collectives, where torch lets it be read (else ``None``)."""
        try:
            device = torch.device("cuda" if self._cuda else "cpu")
            value = self._group._get_backend(device).options._timeout  # type: ignore[union-attr]
        except (AttributeError, RuntimeError, TypeError):
            return None
        return value if isinstance(value, datetime.timedelta) and value.total_seconds() > 0 else None

    @property
    def group(self) -> dist.ProcessGroup | None:
        """The process group this communicator talks over (``None`` once closed)."""
        return self._group

    # ---------------------------------------------------------------- primitives

    def _failure(self, operation: str, error: BaseException) -> CollectiveError:
        return CollectiveError(operation, self._rank, error)

    def _wider_dtype(self, dtype: torch.dtype) -> torch.dtype | None:
        """The dtype that ``dtype`` travels as on this backend, when the backend lacks it."""
        return _GLOO_WIDER.get(dtype) if self._backend == "gloo" else None

    def _accepts_device(self, device: torch.device) -> bool:
        if self._backend == "gloo":
            return device.type in ("cpu", "cuda")
        if self._cuda:
            return device.type == "cuda"
        return device.type == "cpu"

    def _barrier(self) -> None:
        try:
            if self._cuda:
                dist.barrier(group=self._group, device_ids=[self._cuda_device().index])
            else:
                dist.barrier(group=self._group)
        except RuntimeError as error:
            raise self._failure("barrier", error) from error

    def _as_bytes(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """A flat byte view of ``tensor`` when this backend cannot copy its dtype as it is."""
        if self._backend == "gloo" and tensor.dtype in _GLOO_AS_BYTES:
            return tensor.reshape(-1).view(torch.uint8)
        return None

    def _broadcast_tensor(self, tensor: torch.Tensor, src: int) -> None:
        raw = self._as_bytes(tensor)
        carrier = tensor if raw is None else raw
        try:
            dist.broadcast(carrier, self._global_ranks[src], group=self._group)
        except RuntimeError as error:
            raise self._failure("broadcast", error) from error

    def _all_reduce_tensor(self, tensor: torch.Tensor, op: ReduceOp) -> None:
        wider = self._wider_dtype(tensor.dtype)
        carrier = tensor if wider is None else tensor.to(wider)
        try:
            dist.all_reduce(carrier, TO_TORCH[op], group=self._group)
        except RuntimeError as error:
            raise self._failure("all_reduce", error) from error
        if carrier is not tensor:
            tensor.copy_(carrier)

    def _all_gather_tensor(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        raw = self._as_bytes(tensor)
        if raw is not None:
            return [g.view(tensor.dtype).reshape(tensor.shape) for g in self._all_gather_tensor(raw)]
        carrier = tensor
        # One output buffer for all ranks (one allocation, not one per rank); the
        # entries are views of it.
        out = torch.empty((self._world_size, *carrier.shape), dtype=carrier.dtype, device=carrier.device)
        try:
            _all_gather_single(out.view(-1) if carrier.dim() else out, carrier.reshape(-1) if carrier.dim() else carrier.reshape(1), self._group)
        except RuntimeError as error:
            raise self._failure("all_gather", error) from error
        return list(out.unbind(0))

    def _all_gather_uneven(self, tensor: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
        if not self._cuda:
            return super()._all_gather_uneven(tensor, shapes)
        # NCCL gathers tensors of different sizes natively.
        out = [torch.empty(shape, dtype=tensor.dtype, device=tensor.device) for shape in shapes]
        try:
            dist.all_gather(out, tensor, group=self._group)
        except RuntimeError as error:
            raise self._failure("all_gather", error) from error
        return out

    def _all_reduce_tensor_async(self, tensor: torch.Tensor, op: ReduceOp) -> Handle:
        if self._wider_dtype(tensor.dtype) is not None:
            return super()._all_reduce_tensor_async(tensor, op)
        try:
            work = dist.all_reduce(tensor, TO_TORCH[op], group=self._group, async_op=True)
        except RuntimeError as error:
            raise self._failure("all_reduce", error) from error
        return _WorkHandle(work, tensor, "all_reduce", self._rank)

    def _broadcast_tensor_async(self, tensor: torch.Tensor, src: int) -> Handle:
        if self._as_bytes(tensor) is not None:
            return super()._broadcast_tensor_async(tensor, src)
        try:
            work = dist.broadcast(tensor, self._global_ranks[src], group=self._group, async_op=True)
        except RuntimeError as error:
            raise self._failure("broadcast", error) from error
        return _WorkHandle(work, tensor, "broadcast", self._rank)

    def _all_gather_tensor_async(self, tensor: torch.Tensor, home: torch.device) -> Handle:
        if self._as_bytes(tensor) is not None:
            return super()._all_gather_tensor_async(tensor, home)
        out = [torch.empty_like(tensor) for _ in range(self._world_size)]
        try:
            work = dist.all_gather(out, tensor, group=self._group, async_op=True)
        except RuntimeError as error:
            raise self._failure("all_gather", error) from error
        result = out if tensor.device == home else _MovedOnWait(out, home)
        return _WorkHandle(work, result, "all_gather", self._rank)

    def _split(self, members: list[int]) -> Communicator | None:
        global_ranks = [self._global_ranks[m] for m in members]
        # From the default group every rank calls new_group; from a subgroup only its
        # ranks do, which needs torch's group-local synchronization.
        local_sync = self._group is not dist.group.WORLD
        try:
            group = dist.new_group(global_ranks, use_local_synchronization=local_sync)
        except RuntimeError as error:
            raise self._failure("split", error) from error
        if self._rank not in members:
            return None
        child = TorchDistCommunicator(group=group, local_rank=self._local_rank)
        child.object_codec = self.object_codec
        return child

    def _close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            logger.debug("destroyed the default process group")
        # Keep no reference: a destroyed group that lives on until interpreter exit can
        # abort the process there, when its threads are torn down out of order.
        self._group = None


def _local_rank_from_environment(rank: int) -> int:
    """The launcher's local rank, or the global rank when no launcher said (one machine)."""
    for name in _LOCAL_RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return rank
