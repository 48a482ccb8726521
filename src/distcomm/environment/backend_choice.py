"""Which torch.distributed backends distcomm runs on, which this build of torch has, and the
one to take when none is named.

Tested by tests/environment/test_backend_choice.py.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

BACKENDS = ("nccl", "gloo", "mpi")
"""The torch.distributed backends distcomm runs on (``"local"`` is the world of one)."""


def default_backend(cpu: bool = False) -> str:
    """NCCL where CUDA (and torch's NCCL) is available and the CPU was not asked for; Gloo otherwise."""
    if not cpu and torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def backend_available(backend: str) -> bool:
    """Whether this build of torch has ``backend``."""
    checks = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available, "mpi": dist.is_mpi_available}
    return dist.is_available() and backend in checks and bool(checks[backend]())
