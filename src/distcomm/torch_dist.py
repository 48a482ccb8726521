"""``TorchDistCommunicator``: the real communicator, over a torch.distributed process group."""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import time
import weakref
from typing import Any

import torch
import torch.distributed as dist

from distcomm.backends.backend import Backend
from distcomm.backends.torch_dist import TorchDistBackend, form_default_group
from distcomm.communicator import DEFAULT_SETTLE_SECONDS, Communicator
from distcomm.environment.backend_choice import BACKENDS, backend_available, default_backend
from distcomm.environment.devices import nccl_device
from distcomm.environment.job import identity_from_environment, local_rank_from_environment, run_id_agreed, set_run_id
from distcomm.errors import ConfigurationError, DistCommError, InvalidArgumentError, call_torch
from distcomm.values.timeouts import DEFAULT_TIMEOUT, as_timeout
from distcomm.wire import rejoin

logger = logging.getLogger(__name__)

if dist.is_available() and not dist.is_initialized():
    # torch.distributed.nn.functional evaluates ``group=group.WORLD`` defaults when first
    # imported (torch._dynamo and FSDP import it, e.g. when an optimizer is created). Done
    # while a group exists, that pins the group past destroy_process_group, and Gloo then
    # aborts the process at exit ("terminate called without an active exception").
    # Importing it now, before any group exists, makes those defaults None.
    import torch.distributed.nn.functional  # noqa: F401

_ENV_RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")


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
        if group is None:
            agree_on_run_id()  # before the flight recorder names its directory
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
        if rejoin.joining():  # a replacement started by distcomm's agent: it joins the live job
            return cls._join(backend, as_timeout(timeout), local_rank)
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

    @classmethod
    def _join(cls, backend: str, timeout: datetime.timedelta, local_rank: int) -> TorchDistCommunicator:
        """Ask the live job to take this process in, wait to be admitted, and form the grown world
        with the live ranks (:mod:`distcomm.wire.rejoin`); the communicator over its default group.
        A job that finished before admitting it leaves it nothing to do: the process ends with
        :data:`~distcomm.wire.rejoin.NOT_ADMITTED_STATUS`."""
        job = rejoin.job_store()
        if job is None:
            raise ConfigurationError("only workers of python -m distcomm run can join a live job")
        admission = job.wait_admission(job.request(), rejoin.join_timeout())
        if admission is None:
            logger.warning("seat %d: the job finished before this replacement was admitted; nothing to do", job.seat)
            raise SystemExit(rejoin.NOT_ADMITTED_STATUS)

        def make(store: Any, rank: int, world_size: int) -> Backend:
            return form_default_group(backend, store, rank, world_size, timeout, local_rank)

        _, growth = rejoin.form_world(job, admission, make, timeout, DEFAULT_SETTLE_SECONDS)
        comm = cls(local_rank=local_rank, _owns_group=True)  # over the default group form_world just made
        comm.growth, comm.group_name = growth, rejoin.world_name(comm.group_name, admission.number)
        global _owner
        _owner = weakref.ref(comm)
        return comm


_owner: weakref.ReferenceType[TorchDistCommunicator] | None = None
"""The communicator that :meth:`TorchDistCommunicator.init` made with the default group."""


def agree_on_run_id() -> None:
    """Give every rank of the job one run id, through the job's store (the first proposal wins), so
    that its flight records are named after this run and never mix with another's. Once per process."""
    if run_id_agreed():
        return
    try:
        store = dist.distributed_c10d._get_default_store()
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted job is another run
        proposal = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        agreed = store.compare_set(f"distcomm/run-id/{restart}", "", proposal)
    except (AttributeError, RuntimeError, ValueError) as error:  # no store to agree through: a run id of its own
        logger.debug("no run id agreed through the store (%s)", error)
        return
    set_run_id(agreed.decode() if isinstance(agreed, bytes) else str(agreed))


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
