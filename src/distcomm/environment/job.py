"""What the launcher and the user told this process, read from its environment variables alone.

torchrun, SLURM and LSF (jsrun) each export this process's rank, the world size and
its local rank under their own names; a job id names the run. This module only reads
them (nothing here creates a group or touches the network), so the launch planner
(:mod:`distcomm.launch.launcher`), :meth:`TorchDistCommunicator.init` and the flight recorder all
read them the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from distcomm.errors import ConfigurationError

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def environment_flag(name: str, default: bool = False) -> bool:
    """Whether the environment variable ``name`` (a ``DISTCOMM_*`` switch) says yes: a true word
    (1, true, yes, on; any case) is ``True``, a false word (0, false, no, off) ``False``,
    anything else ``default``."""
    word = os.environ.get(name, "").strip().lower()
    return True if word in _TRUE_WORDS else False if word in _FALSE_WORDS else default


class MissingEnvironmentError(ConfigurationError, RuntimeError):
    """A launcher variable that must be set is not."""


IDENTITY_VARIABLES = (
    ("torchrun", "RANK", "WORLD_SIZE"),
    ("SLURM", "SLURM_PROCID", "SLURM_NTASKS"),
    ("LSF/jsrun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
)
"""Each launcher's names for the rank and the world size, in the order they are looked for."""
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")
JOB_VARIABLES = ("DISTCOMM_JOB", "SLURM_JOB_ID", "LSB_JOBID", "TORCHELASTIC_RUN_ID")


def os_environ_get_or_throw(x: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of environment variable ``x``; a ``RuntimeError`` naming ``x`` if it is unset."""
    environ = os.environ if environ is None else environ
    if x not in environ:
        raise MissingEnvironmentError(f"environment variable {x} is not set; the launcher should set it")
    return environ[x]


def int_variable(name: str, environ: Mapping[str, str] | None = None) -> int:
    """The integer in variable ``name``; a :class:`ConfigurationError` when it is unset or not one."""
    value = os_environ_get_or_throw(name, environ)
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"environment variable {name}={value!r} is not an integer") from None


def identity_from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's rank and the world size, as the launcher exported them.

    The first launcher whose rank variable is set wins (torchrun, then SLURM, then
    LSF); a missing or malformed value is a :class:`ConfigurationError` naming it.
    """
    environ = os.environ if environ is None else environ
    for launcher, rank_name, size_name in IDENTITY_VARIABLES:
        if rank_name in environ:
            if size_name not in environ:
                raise MissingEnvironmentError(
                    f"{rank_name} is set but {size_name} is not: {launcher} should export both; pass world_size"
                )
            return int_variable(rank_name, environ), int_variable(size_name, environ)
    names = ", ".join(f"{r}/{s} ({launcher})" for launcher, r, s in IDENTITY_VARIABLES)
    raise MissingEnvironmentError(
        f"rank and world_size were not given and no launcher exported them (looked for {names}): "
        "pass rank= and world_size=, or start the job with torchrun, srun or jsrun"
    )


def local_rank_from_environment(rank: int, environ: Mapping[str, str] | None = None) -> int:
    """The launcher's local rank, or the global rank when no launcher said (one machine)."""
    environ = os.environ if environ is None else environ
    for name in LOCAL_RANK_VARIABLES:
        value = environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return rank


_run_id: str | None = None
"""This run's id, agreed by its ranks when the first communicator over the whole job was made."""
_own_run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
"""The id of a process that agreed on none (a single process): when it started, and its pid."""


def set_run_id(run_id: str) -> None:
    """Remember ``run_id``, the id every rank of this run agreed on (see :func:`run_id`)."""
    global _run_id
    _run_id = _file_name(run_id)


def run_id_agreed() -> bool:
    """Whether this process's ranks agreed on a run id already."""
    return _run_id is not None


def run_id() -> str:
    """This run's id, unique to it: the one its ranks agreed on through the job's store when the
    first communicator was made (a time and a random part), else this process's own."""
    return _run_id or _own_run_id


def job_name(environ: Mapping[str, str] | None = None) -> str:
    """The run's name as a file name: ``DISTCOMM_JOB``, else the SLURM or LSF job id, else torchrun's
    run id (with its restart count), else ``run-`` and this run's own id (:func:`run_id`), so that
    records of different runs never share a name."""
    environ = os.environ if environ is None else environ
    for name in JOB_VARIABLES:
        value = environ.get(name)
        if value and not (name == "TORCHELASTIC_RUN_ID" and value == "none"):  # torchrun's default is no id
            restart = environ.get("TORCHELASTIC_RESTART_COUNT") if name == "TORCHELASTIC_RUN_ID" else None
            return _file_name(value if not restart or restart == "0" else f"{value}-restart{restart}")
    return f"run-{run_id()}"


def _file_name(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)
