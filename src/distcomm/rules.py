"""One home for the small rules that several modules need: constants, environment
flags, timeouts, backend names and the dtype code table.

Each rule is written here once, so a change of mind (a new dtype, another spelling of
"true") reaches every module that uses it.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from distcomm.errors import InvalidArgumentError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The range of values an int64 tensor holds; Python ints outside it take exact paths."""


def fits_int64(value: int) -> bool:
    """Whether the Python int ``value`` fits in an int64 tensor."""
    return INT64_MIN <= value <= INT64_MAX

BACKENDS = ("nccl", "gloo", "mpi")
"""The torch.distributed backends distcomm runs on (``"local"`` is the world of one)."""

DTYPES: tuple[torch.dtype, ...] = (
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.uint16, torch.uint32, torch.uint64,
)  # fmt: skip
"""Every dtype distcomm sends; on the wire a dtype's code is its index (new ones go at the end)."""
DTYPE_CODES: dict[torch.dtype, int] = {dtype: code for code, dtype in enumerate(DTYPES)}
DTYPES_BY_NAME: dict[str, torch.dtype] = {str(dtype): dtype for dtype in DTYPES}

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
"""torch's own default for a process group, and ours."""

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def environment_flag(name: str, default: bool = False) -> bool:
    """Whether the environment variable ``name`` says yes: a true word (1, true, yes, on; any
    case) is ``True``, a false word (0, false, no, off) ``False``, anything else ``default``."""
    word = os.environ.get(name, "").strip().lower()
    return True if word in _TRUE_WORDS else False if word in _FALSE_WORDS else default


def as_timeout(value: datetime.timedelta | float, name: str = "timeout") -> datetime.timedelta:
    """``value`` (seconds or a timedelta) as a positive timedelta, or a clear error."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidArgumentError(f"{name} must be seconds or a timedelta, got {value!r}")
    if not seconds > 0:
        raise InvalidArgumentError(f"{name} must be positive, got {seconds} seconds")
    return datetime.timedelta(seconds=seconds)


def default_backend(cpu: bool = False) -> str:
    """NCCL where CUDA (and torch's NCCL) is available and the CPU was not asked for; Gloo otherwise."""
    if not cpu and torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def backend_available(backend: str) -> bool:
    """Whether this build of torch has ``backend``."""
    checks = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available, "mpi": dist.is_mpi_available}
    return dist.is_available() and backend in checks and bool(checks[backend]())
