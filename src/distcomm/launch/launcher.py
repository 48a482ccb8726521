"""Launch environments: find out how this process was started, then start the job.

:func:`plan_launch` reads the environment (SLURM, LSF ``jsrun``, ``torchrun``, or a
lone process) and returns a :class:`LaunchPlan` without side effects, so it can be
tested and shown by ``python -m distcomm info``. :func:`setup` carries a plan out.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, MutableMapping
from typing import Any

import attrs
import torch
import torch.distributed as dist

from distcomm.communicator import Communicator
from distcomm.environment.config import DistributedConfig
from distcomm.environment.devices import assign_device_for_local_rank
from distcomm.environment.job import MissingEnvironmentError as MissingEnvironmentError  # re-exported
from distcomm.environment.job import identity_from_environment as identity_from_environment  # re-exported
from distcomm.environment.job import int_variable
from distcomm.environment.job import os_environ_get_or_throw as os_environ_get_or_throw  # re-exported
from distcomm.errors import CollectiveError, ConfigurationError
from distcomm.launch.active import forget_default_group, instrument, set_communicator
from distcomm.torch_dist import TorchDistCommunicator
from distcomm.wire.rejoin import LAUNCHER_VARIABLE

logger = logging.getLogger(__name__)

DISTRIBUTED_PORT = 13356
"""The TCP port of the rendezvous under SLURM."""
LSF_MASTER_PORT = 23456
PORT_OVERRIDE_VARIABLE = "DISTCOMM_MASTER_PORT"
"""Set it to move the fixed SLURM and LSF rendezvous ports, where another service holds them."""


def find_free_port() -> int:
    """A TCP port that is free now (another process may still take it: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


LOCAL_VARIABLES = ("MASTER_ADDR", "LOCAL_RANK", "RANK", "MASTER_PORT")
"""What :func:`setup_env_local` sets."""


def setup_env_local() -> None:
    """Set the rendezvous variables for a lone process on this machine."""
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["LOCAL_RANK"] = "0"
    os.environ["RANK"] = "0"
    os.environ["MASTER_PORT"] = str(find_free_port())


@attrs.frozen
class LaunchPlan:
    """What this process will do to join the job."""

    launcher: str
    """``"slurm"``, ``"lsf"``, ``"torchrun"`` or ``"single"``."""
    rank: int
    world_size: int
    local_rank: int
    init_method: str
    backend: str
    environment: dict[str, str] = attrs.field(factory=dict)
    """Variables to export before the process group is created."""


def init_method_url(
    kind: str, world_size: int | None, rank: int | None = None, node_list: str | None = None, filename: str | None = None
) -> str:
    """A rendezvous URL of ``kind`` ``"tcp"`` (the first host of a SLURM ``node_list`` on
    :data:`DISTRIBUTED_PORT`, or on a free port for a world of one) or ``"file"`` (``filename``,
    else a new temporary file), with ``world_size`` and ``rank`` in its query where given,
    as torch's rendezvous reads them. Anything else is a ``ValueError``."""
    if kind == "tcp":
        host = slurm_hostnames(node_list or "", os.environ.get("PATH", os.defpath))[0]
        url = f"tcp://{host}:{find_free_port() if world_size == 1 else DISTRIBUTED_PORT}"
    elif kind == "file":
        if filename is None:
            with tempfile.NamedTemporaryFile(prefix="distcomm-rendezvous-", delete=False) as handle:
                filename = handle.name
        url = f"file://{filename}"
    else:
        raise ValueError(f"Invalid init_method: {kind}")
    query = "&".join(f"{name}={value}" for name, value in (("world_size", world_size), ("rank", rank)) if value is not None)
    return f"{url}?{query}" if query else url


def slurm_hostnames(node_list: str, path: str | None = None) -> list[str]:
    """Expand a SLURM node list: ``scontrol`` when it is on ``path`` (PATH), else python-hostlist."""
    scontrol = shutil.which("scontrol", path=path)
    if scontrol:
        try:
            output = subprocess.run(
                [scontrol, "show", "hostnames", node_list], capture_output=True, text=True, check=True, timeout=60
            ).stdout
        except (OSError, subprocess.SubprocessError) as error:
            raise ConfigurationError(f"'scontrol show hostnames {node_list}' failed: {error}") from error
        hosts = output.split()
    else:
        try:
            import hostlist  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigurationError(
                "cannot expand the SLURM node list: scontrol is not on PATH and python-hostlist is not "
                "installed; pip install 'distcomm[slurm]'"
            ) from None
        try:
            hosts = list(hostlist.expand_hostlist(node_list))
        except hostlist.BadHostlist as error:
            raise ConfigurationError(f"cannot expand the SLURM node list {node_list!r}: {error}") from error
    if not hosts:
        raise ConfigurationError(f"the SLURM node list {node_list!r} names no host")
    return hosts


def _fixed_port(default: int, environ: Mapping[str, str]) -> int:
    value = environ.get(PORT_OVERRIDE_VARIABLE)
    if value is None:
        return default
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigurationError(f"{PORT_OVERRIDE_VARIABLE}={value!r} is not a TCP port (1-65535)")
    return int(value)


def detect_launcher(environ: Mapping[str, str] | None = None) -> str:
    """Which launcher started this process, judged by its variables alone."""
    environ = os.environ if environ is None else environ
    if environ.get(LAUNCHER_VARIABLE) == "distcomm":  # python -m distcomm run, also under srun: torchrun's variables
        return "torchrun"
    if "SLURM_PROCID" in environ and ("SLURM_STEP_NODELIST" in environ or "SLURM_JOB_NODELIST" in environ):
        return "slurm"
    if "OMPI_COMM_WORLD_RANK" in environ and "LSB_DJOB_HOSTFILE" in environ:
        return "lsf"
    if "MASTER_ADDR" in environ:
        return "torchrun"
    return "single"


def _plan_slurm(config: DistributedConfig, environ: Mapping[str, str]) -> LaunchPlan:
    node_list = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if not node_list:
        raise ConfigurationError(
            "submit is true but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set: start the job "
            "with srun/sbatch, or set submit to false (each rank would otherwise train alone as rank 0)"
        )
    host = slurm_hostnames(node_list, environ.get("PATH", os.defpath))[0]
    nnodes = int_variable("SLURM_NNODES", environ)
    if "SLURM_NTASKS_PER_NODE" in environ:
        per_node_text = environ["SLURM_NTASKS_PER_NODE"].split("(")[0]
        if not per_node_text.isdigit():
            raise ConfigurationError(f"SLURM_NTASKS_PER_NODE={environ['SLURM_NTASKS_PER_NODE']!r} is not an integer")
        tasks_per_node = int(per_node_text)
    else:
        ntasks = int_variable("SLURM_NTASKS", environ)
        if ntasks % nnodes:
            raise ConfigurationError(f"SLURM_NTASKS={ntasks} does not divide evenly over SLURM_NNODES={nnodes}")
        tasks_per_node = ntasks // nnodes
    world_size = config.world_size
    if tasks_per_node == 1:
        if world_size % nnodes:
            raise ConfigurationError(f"world_size={world_size} must be divisible by SLURM_NNODES={nnodes}")
        rank = int_variable("SLURM_NODEID", environ) * (world_size // nnodes)
        local_rank = 0
    else:
        if tasks_per_node != world_size // nnodes:
            raise ConfigurationError(
                f"SLURM runs {tasks_per_node} tasks per node but world_size={world_size} over {nnodes} "
                f"nodes needs {world_size // nnodes}: make world_size = tasks per node x nodes"
            )
        rank = int_variable("SLURM_PROCID", environ)
        local_rank = int_variable("SLURM_LOCALID", environ)
    return LaunchPlan(
        "slurm",
        rank,
        world_size,
        local_rank,
        f"tcp://{host}:{_fixed_port(DISTRIBUTED_PORT, environ)}",
        config.resolved_backend,
    )


def read_lsf_hostfile(path: str) -> list[str]:
    """The compute hosts of an LSF hostfile: sorted, unique, without batch or login nodes."""
    try:
        with open(path) as handle:
            names = {line.strip() for line in handle if line.strip()}
    except OSError as error:
        raise ConfigurationError(f"cannot read the LSF hostfile {path}: {error}") from error
    hosts = sorted(name for name in names if "batch" not in name and "login" not in name)
    if not hosts:
        raise ConfigurationError(f"the LSF hostfile {path} names no compute host")
    return hosts


def _plan_lsf(config: DistributedConfig, environ: Mapping[str, str]) -> LaunchPlan:
    world_size = int_variable("OMPI_COMM_WORLD_SIZE", environ)
    rank = int_variable("OMPI_COMM_WORLD_RANK", environ)
    local_rank = int(environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
    master = read_lsf_hostfile(os_environ_get_or_throw("LSB_DJOB_HOSTFILE", environ))[0]
    exports = {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(_fixed_port(LSF_MASTER_PORT, environ)),
        "WORLD_SIZE": str(world_size),
        "RANK": str(rank),
    }
    return LaunchPlan("lsf", rank, world_size, local_rank, "env://", config.resolved_backend, exports)


def _plan_torchrun(config: DistributedConfig, environ: Mapping[str, str]) -> LaunchPlan:
    if "MASTER_ADDR" not in environ and (config.init_method or "").startswith("file://"):
        # A shared-file rendezvous needs no address: each process says its rank (fairchem's local "file" mode).
        rank = int_variable("RANK", environ) if "RANK" in environ else 0
        if rank >= config.world_size:
            raise ConfigurationError(f"RANK={rank} is not below world_size={config.world_size}")
        local_rank = int_variable("LOCAL_RANK", environ) if "LOCAL_RANK" in environ else 0
        return LaunchPlan("file", rank, config.world_size, local_rank, config.init_method or "", config.resolved_backend)
    if "MASTER_ADDR" not in environ:
        if config.world_size != 1:
            raise ConfigurationError(
                f"world_size={config.world_size} but no launcher set MASTER_ADDR: start the job with "
                f"'torchrun --nproc-per-node {config.world_size} ...', srun (submit: true) or jsrun "
                "(summit: true), or set world_size to 1 for a single process"
            )
        return LaunchPlan("single", 0, 1, 0, "env://", config.resolved_backend)
    rank = int_variable("RANK", environ)
    local_rank = int_variable("LOCAL_RANK", environ)
    int_variable("MASTER_PORT", environ)
    launched = environ.get("WORLD_SIZE")
    if launched is not None and launched.isdigit() and int(launched) != config.world_size:
        raise ConfigurationError(
            f"the launcher started WORLD_SIZE={launched} processes but the config says "
            f"world_size={config.world_size}: make them agree"
        )
    if rank >= config.world_size:
        raise ConfigurationError(f"RANK={rank} is not below world_size={config.world_size}")
    return LaunchPlan("torchrun", rank, config.world_size, local_rank, "env://", config.resolved_backend)


def plan_launch(
    config: Mapping[str, Any] | DistributedConfig,
    environ: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """Decide how to join the job: SLURM if ``submit``, LSF if ``summit``, else torchrun or a lone
    process. A worker of ``python -m distcomm run`` takes its agent's variables (torchrun's) even
    where the agent itself was started by srun or jsrun, whose variables it inherited."""
    settings = DistributedConfig.from_mapping(config)
    environ = os.environ if environ is None else environ
    if environ.get(LAUNCHER_VARIABLE) == "distcomm":
        plan = _plan_torchrun(settings, environ)
    elif settings.submit:
        plan = _plan_slurm(settings, environ)
    elif settings.summit:
        plan = _plan_lsf(settings, environ)
    else:
        plan = _plan_torchrun(settings, environ)
    explicit = settings.init_method
    if explicit is not None and (plan.launcher in ("torchrun", "single") or explicit.startswith("file://")):
        plan = attrs.evolve(plan, init_method=explicit)  # a shared-file rendezvous wins under SLURM and LSF too
    return plan


def _assign_device(settings: DistributedConfig, local_rank: int) -> None:
    if settings.use_cuda_visible_devices:
        assign_device_for_local_rank(settings.cpu, local_rank)
    elif torch.cuda.is_available() and not settings.cpu:
        torch.cuda.set_device(local_rank)


def setup(config: MutableMapping[str, Any] | DistributedConfig) -> Communicator:
    """Create the default process group as ``config`` and the environment say, and make
    the new communicator the active one (with the hooks ``DISTCOMM_DEBUG`` and
    ``DISTCOMM_PROFILE`` ask for). A dict config gets ``init_method``, ``rank``
    and ``local_rank`` written back, as legacy callers expect."""
    settings = DistributedConfig.from_mapping(config)
    if dist.is_initialized():  # a ValueError, as torch's own "initialize the default process group twice"
        raise ConfigurationError("torch.distributed is already initialized: call cleanup() before setup() again")
    plan = plan_launch(settings)
    if isinstance(config, MutableMapping):
        if plan.launcher == "slurm":
            config["init_method"] = plan.init_method
            config["rank"] = plan.rank
        config["local_rank"] = plan.local_rank
    _exported.update({name: os.environ.get(name) for name in plan.environment if name not in _exported})
    os.environ.update(plan.environment)
    _assign_device(settings, plan.local_rank)
    init_method = plan.init_method
    if plan.launcher == "single":
        _exported.update({name: os.environ.get(name) for name in LOCAL_VARIABLES if name not in _exported})
        setup_env_local()  # the variables legacy callers read; the rendezvous itself needs no port
        if init_method.startswith("env:"):  # env://, env:///, env://?x=1: no launcher, so no network either
            init_method = private_rendezvous()
    try:
        owner = TorchDistCommunicator.init(
            plan.backend,
            rank=plan.rank,
            world_size=plan.world_size,
            init_method=init_method,
            timeout=settings.timeout,
            local_rank=plan.local_rank,
        )
    except CollectiveError as error:
        if "address already in use" not in str(error).lower():
            raise
        raise CollectiveError(
            "init_process_group",
            plan.rank,
            f"the rendezvous port of {init_method} (MASTER_PORT={os.environ.get('MASTER_PORT')}) is "
            f"already in use by another process: choose another port ({PORT_OVERRIDE_VARIABLE} under "
            f"SLURM and LSF) or stop that process. {error.cause}",
        ) from error
    comm = instrument(owner)
    set_communicator(comm)
    logger.info("%s launch: rank %d of %d (local rank %d)", plan.launcher, plan.rank, plan.world_size, plan.local_rank)
    return comm


def private_rendezvous() -> str:
    """A file rendezvous in a new directory only this user can open.

    A lone process needs no network: a TCP store would listen on every interface, where
    any host that can reach this one could connect and write keys.
    """
    directory = tempfile.mkdtemp(prefix="distcomm-rendezvous-")  # mode 0700
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return f"file://{directory}/store"


def cleanup() -> None:
    """Destroy the default process group, if any, and go back to the single-process communicator."""
    previous = set_communicator(None)
    forget_default_group()
    if previous is not None:
        previous.close()  # destroys the group when it owns it, and drops its reference
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name, value in _exported.items():  # what setup() exported goes back as it was
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _exported.clear()


_exported: dict[str, str | None] = {}
"""The variables :func:`setup` exported, with the values they had before (``None``: unset)."""
