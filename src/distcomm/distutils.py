"""The documented module-level function API, kept working for legacy callers.

Every function forwards to the active communicator (see :mod:`distcomm.launch.active`), so
legacy code and code that injects a :class:`~distcomm.Communicator` see the same
world. Names, parameters and defaults are exactly those of the documented API.

Unlike the code these callers were written against, results never change kind with
the world size: ``all_gather`` always returns a list, ``all_reduce`` of a list always
returns a NumPy array (or a number, for one element).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from distcomm.backends.handles import Handle
from distcomm.communicator import Communicator
from distcomm.environment import devices
from distcomm.errors import InvalidArgumentError
from distcomm.launch import launcher as launch
from distcomm.launch.active import get_communicator, instrument
from distcomm.torch_dist import TorchDistCommunicator
from distcomm.values.conversion import describe, parse_device
from distcomm.values.dtypes import fits_int64
from distcomm.values.ops import ReduceOp
from distcomm.values.reduction_rules import NOT_ALONE, reduce_if_alone

T = TypeVar("T")
DISTRIBUTED_PORT = launch.DISTRIBUTED_PORT
CURRENT_DEVICE_STR = devices.CURRENT_DEVICE_STR

__all__ = [
    "T",
    "DISTRIBUTED_PORT",
    "CURRENT_DEVICE_STR",
    "os_environ_get_or_throw",
    "setup",
    "cleanup",
    "initialized",
    "get_rank",
    "get_world_size",
    "is_master",
    "synchronize",
    "broadcast",
    "broadcast_object_list",
    "all_reduce",
    "all_gather",
    "gather_objects",
    "assign_device_for_local_rank",
    "get_device_for_local_rank",
    "setup_env_local",
]

# The documented default of every ``group=`` parameter is ``dist.group.WORLD``, which
# is None whenever no group exists yet, as at any normal import. It is written as None
# here on purpose: a default evaluated while a group exists would hold that group for
# the life of the process, so that a destroyed Gloo group outlives it and aborts the
# interpreter at exit (torch.distributed.nn.functional has exactly that problem).
_DEFAULT_GROUP = None


def _communicator_for(group: Any) -> Communicator:
    """The active communicator for the default group; a new one for any other group.

    Nothing is cached for other groups, so the facade holds no process group past its
    life (a destroyed group kept alive to interpreter exit can abort the process there).
    """
    if group is None or group is dist.group.WORLD:
        return get_communicator()
    if not isinstance(group, dist.ProcessGroup):
        raise InvalidArgumentError(
            f"group must be a torch.distributed ProcessGroup (a communicator's .group), or None for the "
            f"default group; got {describe(group)}"
        )
    return instrument(TorchDistCommunicator(group=group))


def _legacy_tensor(data: Any, operation: str, device: Any) -> torch.Tensor:
    """Make non-tensor data into a tensor as the legacy functions did (``torch.tensor``)."""
    try:
        tensor = torch.tensor(data)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InvalidArgumentError(
            f"{operation} cannot take {describe(data)}: pass a tensor, a number, a list of numbers "
            f"or a NumPy array ({error})"
        ) from error
    return tensor if device is None else tensor.to(parse_device(device, operation))


def os_environ_get_or_throw(x: str) -> str:
    """The value of environment variable ``x``; ``RuntimeError`` naming ``x`` when unset."""
    return launch.os_environ_get_or_throw(x)


def setup(config) -> None:  # type: ignore[no-untyped-def]
    """Initialize the default process group from a dict-like job config (unknown keys
    are ignored) and make its communicator the active one. SLURM (``submit``), LSF
    (``summit``), torchrun and a lone process are supported."""
    launch.setup(config)


def cleanup() -> None:
    """Destroy the default process group if there is one; harmless when repeated."""
    launch.cleanup()


def initialized() -> bool:
    """Whether torch.distributed is available and initialized."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return get_communicator().rank


def get_world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return get_communicator().world_size


def is_master() -> bool:
    """Whether this is rank 0."""
    return get_communicator().rank == 0


def synchronize() -> None:
    """A barrier across all ranks; nothing at world size 1."""
    comm = get_communicator()
    if comm.world_size > 1:
        comm.barrier()


def broadcast(tensor: torch.Tensor, src, group=_DEFAULT_GROUP, async_op: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Fill ``tensor`` in place with rank ``src``'s; with ``async_op`` return a handle to wait on."""
    if not isinstance(tensor, torch.Tensor):
        raise InvalidArgumentError(f"broadcast fills a tensor in place; got {describe(tensor)}")
    comm = _communicator_for(group)
    if async_op:
        handle: Handle = comm.broadcast_async(tensor, src)
        return handle  # type: ignore[return-value]
    comm.broadcast(tensor, src)
    return None


def broadcast_object_list(object_list: list[Any], src: int, group=_DEFAULT_GROUP, device: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Replace, in place, the items of ``object_list`` on every rank by rank ``src``'s."""
    _communicator_for(group).broadcast_object_list(object_list, src, device=device)


_SUM, _MEAN = ReduceOp.SUM, ReduceOp.MEAN  # looked up once: an enum member's lookup is slow


def all_reduce(data, group=_DEFAULT_GROUP, average: bool = False, device=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Sum (or, with ``average``, mean) ``data`` over all ranks.

    A tensor is reduced in place and returned. Anything else (a number, a list of
    numbers, a NumPy array) is reduced by the communicator, which keeps Python numbers
    in double precision and reconciles ranks that pass an int where others pass a
    float, and returned as a Python number when it has one element, else as a NumPy
    array, at every world size. ``device`` is accepted for compatibility: non-tensor
    data travels on the communicator's device.
    """
    comm = get_communicator() if group is None else _communicator_for(group)
    if type(data) is float or type(data) is int:
        # The hot path of single-process training loops: over one rank the communicator's own
        # shortcut answers without a call (the same rule and result as comm.all_reduce).
        alone = reduce_if_alone(data, _MEAN if average else _SUM, comm.world_size)
        if alone is not NOT_ALONE:
            return alone  # type: ignore[no-any-return]
    op = "mean" if average else "sum"
    if type(data) in (float, int) and fits_int64(data) or isinstance(data, torch.Tensor):
        return comm.all_reduce(data, op)  # type: ignore[no-any-return]
    if device is not None:
        parse_device(device, "all_reduce")  # a bad device fails here, before anything moves
    result = np.asarray(comm.all_reduce(_legacy_numbers(data, "all_reduce"), op))
    return result.item() if result.size == 1 else result  # type: ignore[return-value]


def _legacy_numbers(data: Any, operation: str) -> Any:
    """``data`` as the communicator takes it, refusing what the legacy ``torch.tensor`` refused."""
    if not isinstance(data, (list, tuple, bool, int, float, complex, np.ndarray, np.generic)):
        raise InvalidArgumentError(
            f"{operation} cannot take {describe(data)}: pass a tensor, a number, a list of numbers or a NumPy array"
        )
    if isinstance(data, (list, tuple)):
        try:
            array = np.asarray(data)
        except ValueError as error:
            raise InvalidArgumentError(f"{operation} cannot take a ragged {describe(data)}: {error}") from error
        if array.dtype.kind not in "biufc":
            raise InvalidArgumentError(
                f"{operation} cannot take {describe(data)} of {array.dtype}: pass a tensor, a number, "
                "a list of numbers or a NumPy array"
            )
    return data


def all_gather(data, group=_DEFAULT_GROUP, device=None) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """One entry per rank, in rank order: tensors for a tensor, NumPy arrays for anything else.

    It is always a list, also at world size 1.
    """
    comm = _communicator_for(group)
    if isinstance(data, torch.Tensor):
        return comm.all_gather(data)
    gathered = comm.all_gather(_legacy_tensor(data, "all_gather", device))
    arrays: list[np.ndarray] = [t.cpu().numpy() for t in gathered]
    return arrays  # type: ignore[return-value]


def gather_objects(data: T, group: torch.distributed.ProcessGroup = _DEFAULT_GROUP) -> list[T]:  # type: ignore[assignment]
    """Gather a list of pickleable objects into rank 0 (``None`` on the other ranks)."""
    return _communicator_for(group).gather_object(data, dst=0)  # type: ignore[return-value]


def assign_device_for_local_rank(cpu: bool, local_rank: int):  # type: ignore[no-untyped-def]
    """Set ``CURRRENT_DEVICE`` and, for a GPU, ``CUDA_VISIBLE_DEVICES`` to this process's GPU."""
    return devices.assign_device_for_local_rank(cpu, local_rank)


def get_device_for_local_rank():  # type: ignore[no-untyped-def]
    """The device type given to this process (``"cpu"`` or ``"cuda"``)."""
    return devices.get_device_for_local_rank()


def setup_env_local():  # type: ignore[no-untyped-def]
    """Set MASTER_ADDR, MASTER_PORT (a free port), RANK and LOCAL_RANK for a lone process."""
    return launch.setup_env_local()
