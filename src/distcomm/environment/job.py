"""What the launcher and the user told this process, read from its environment variables alone.

torchrun, SLURM and LSF (jsrun) each export this process's rank, the world size and
its local rank under their own names; a job id names the run. This module only reads
them (nothing here creates a group or touches the network), so the launch planner
(:mod:`distcomm.launch.launcher`), :meth:`TorchDistCommunicator.init` and the flight recorder all
read them the same way.
"""

from __future__ import annotations

import os
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


def job_name(environ: Mapping[str, str] | None = None) -> str:
    """The run's name as a file name: ``DISTCOMM_JOB``, else the SLURM or LSF job id or torchrun's
    run id, else ``"job"``."""
    environ = os.environ if environ is None else environ
    for name in JOB_VARIABLES:
        value = environ.get(name)
        if value:
            return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)
    return "job"
