"""Today's fairchem API (``fairchem.core.common.distutils``), forwarding to the active communicator.

Import it where code was written against today's fairchem; :mod:`distcomm.distutils`
keeps the documented API of early 2025. Every function the two APIs share is the same
function (imported from :mod:`distcomm.distutils`); what differs is written here:

* ``CURRENT_DEVICE_TYPE_STR`` (``"CURRRENT_DEVICE_TYPE"``) instead of ``CURRENT_DEVICE_STR``;
* :func:`assign_device_for_local_rank` binds the GPU with ``torch.cuda.set_device`` (no
  ``CUDA_VISIBLE_DEVICES``), and :func:`get_device_for_local_rank` returns ``"cuda:N"``;
* :func:`get_init_method`, :func:`setup_env_local_multi_gpu` and :func:`cleanup_gp_ray`;
* :func:`setup` reads ``init_method: "tcp" | "file"`` and ``shared_file_dir`` as fairchem does;
* :func:`os_environ_get_or_throw` says ``Could not find X in ENV variables``.

Ray and graph parallelism are not dependencies: :func:`cleanup_gp_ray` shuts Ray down
only where it is importable and running, and tears down only what distcomm created.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

from distcomm.distutils import (
    DISTRIBUTED_PORT,
    T,
    all_gather,
    all_reduce,
    broadcast,
    broadcast_object_list,
    gather_objects,
    get_rank,
    get_world_size,
    initialized,
    is_master,
    setup_env_local,
    synchronize,
)
from distcomm.distutils import cleanup as _cleanup
from distcomm.environment import devices
from distcomm.errors import ConfigurationError
from distcomm.launch import launcher as launch

CURRENT_DEVICE_TYPE_STR = devices.CURRENT_DEVICE_TYPE_STR

__all__ = [
    "T",
    "DISTRIBUTED_PORT",
    "CURRENT_DEVICE_TYPE_STR",
    "os_environ_get_or_throw",
    "get_init_method",
    "setup",
    "cleanup",
    "cleanup_gp_ray",
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
    "setup_env_local_multi_gpu",
]


def os_environ_get_or_throw(x: str) -> str:
    """The value of environment variable ``x``; ``RuntimeError("Could not find x in ENV variables")`` when unset."""
    if x not in os.environ:
        raise RuntimeError(f"Could not find {x} in ENV variables")
    return os.environ[x]


def get_init_method(init_method, world_size: int | None, rank: int | None = None, node_list: str | None = None, filename: str | None = None):  # type: ignore[no-untyped-def]
    """The rendezvous URL for ``init_method`` ``"tcp"`` (first host of the SLURM ``node_list``,
    ``DISTRIBUTED_PORT``, a free port for a world of one) or ``"file"`` (``filename``); the
    query carries ``world_size`` and ``rank``. Anything else is a ``ValueError``."""
    return launch.init_method_url(init_method, world_size, rank, node_list, filename)


def setup(config) -> None:  # type: ignore[no-untyped-def]
    """Initialize the default process group as today's fairchem does, and make its communicator active.

    ``submit`` (SLURM) and the local modes (torchrun, a lone process) work as in
    :func:`distcomm.distutils.setup`; ``init_method: "file"`` meets through a file in
    ``shared_file_dir`` (``.distributed-shared-file-<array_job_num>`` under SLURM,
    ``.distributed-shared-file`` locally), ``"tcp"`` or none through the launcher.
    Each process's GPU is bound with ``torch.cuda.set_device`` and recorded in
    ``CURRRENT_DEVICE_TYPE``.
    """
    if not isinstance(config, Mapping):
        raise ConfigurationError(f"setup takes the job's distributed config as a dict, got {type(config).__name__}")
    translated = {key: config[key] for key in ("world_size", "distributed_backend", "cpu", "timeout", "submit", "summit") if key in config}
    if config.get("init_method") == "file":
        directory = config.get("shared_file_dir")
        if not isinstance(directory, (str, os.PathLike)) or not os.path.isdir(directory):
            raise ConfigurationError(
                f"init_method 'file' needs shared_file_dir, a directory every rank can reach; got {directory!r}"
            )
        name = ".distributed-shared-file"
        if config.get("submit"):
            if "array_job_num" not in config:
                raise ConfigurationError("init_method 'file' with submit: true needs array_job_num (the SLURM array index)")
            name = f"{name}-{config['array_job_num']}"
        translated["init_method"] = f"file://{os.path.join(directory, name)}"
    comm = launch.setup(translated)
    devices.set_device_for_local_rank(bool(config.get("cpu", False)), comm.local_rank)


def cleanup() -> None:
    """Destroy the default process group, if any, and forget the assigned device type."""
    _cleanup()
    os.environ.pop(CURRENT_DEVICE_TYPE_STR, None)


def cleanup_gp_ray():  # type: ignore[no-untyped-def]
    """Shut Ray down where it is installed and running, then :func:`cleanup`. distcomm creates
    no graph-parallel groups, so there are none of its own to tear down."""
    if importlib.util.find_spec("ray") is not None:
        import ray  # type: ignore[import-not-found]  # fairchem's optional dependency, never distcomm's

        if ray.is_initialized():
            ray.shutdown()
    cleanup()


def assign_device_for_local_rank(cpu: bool, local_rank: int) -> None:
    """Record ``"cpu"`` or ``"cuda"`` in ``CURRRENT_DEVICE_TYPE`` and bind GPU ``local_rank``."""
    devices.set_device_for_local_rank(cpu, local_rank)


def get_device_for_local_rank() -> str:
    """``"cpu"`` or ``"cuda:N"``; when nothing was assigned, the best guess with a warning."""
    return devices.current_device_string()


def setup_env_local_multi_gpu(rank: int, port: int, address: str = "localhost"):  # type: ignore[no-untyped-def]
    """Set ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``LOCAL_RANK`` for rank ``rank`` of a local job."""
    os.environ.update({"MASTER_ADDR": address, "LOCAL_RANK": str(rank), "RANK": str(rank), "MASTER_PORT": str(port)})


