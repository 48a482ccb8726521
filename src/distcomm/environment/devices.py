"""Which device each process uses: the ``CURRRENT_DEVICE`` variable and GPU assignment."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

from distcomm.errors import ConfigurationError

logger = logging.getLogger(__name__)

CURRENT_DEVICE_STR = "CURRRENT_DEVICE"
"""Name of the environment variable holding this process's device type (sic: three R's)."""
CURRENT_DEVICE_TYPE_STR = "CURRRENT_DEVICE_TYPE"
"""Today's fairchem's name for it: it holds ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""


def assign_device_for_local_rank(cpu: bool, local_rank: int) -> None:
    """Give this process its device: the CPU, or GPU ``local_rank`` seen as ``cuda:0``.

    ``CUDA_VISIBLE_DEVICES`` only takes effect before CUDA is initialized in the
    process. When it already is, the variable is still set (for child processes) and
    this process falls back to ``torch.cuda.set_device(local_rank)``, with a warning.
    """
    if cpu:
        os.environ[CURRENT_DEVICE_STR] = "cpu"
        return
    os.environ[CURRENT_DEVICE_STR] = "cuda"
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        logger.warning(
            "CUDA is already initialized in this process, so CUDA_VISIBLE_DEVICES=%d has no effect "
            "here; using torch.cuda.set_device(%d) instead (GPU %d is cuda:%d, not cuda:0)",
            local_rank, local_rank, local_rank, local_rank,
        )  # fmt: skip
        os.environ["CUDA_VISIBLE_DEVICES"] = str(local_rank)
        torch.cuda.set_device(local_rank)
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = str(local_rank)


def get_device_for_local_rank() -> str:
    """The device type this process was given, or the best guess with a warning."""
    assigned = os.environ.get(CURRENT_DEVICE_STR)
    if assigned:
        return assigned
    guess = "cuda" if torch.cuda.is_available() else "cpu"
    logger.warning("%s is not set (no device was assigned to this process); using %r", CURRENT_DEVICE_STR, guess)
    return guess


def nccl_device(local_rank: int, device_count: int, environ: Mapping[str, str] | None = None) -> torch.device:
    """The GPU an NCCL rank binds to, or a :class:`ConfigurationError` when ranks would share one.

    NCCL needs one GPU per rank: it fails inside its own init ("Duplicate GPU detected")
    when two ranks of a machine pick the same device. Say so before, in words: which
    local ranks would share which device, and what to do. A process narrowed to one GPU
    by ``CUDA_VISIBLE_DEVICES`` uses it as ``cuda:0``.
    """
    environ = os.environ if environ is None else environ
    if device_count < 1:
        raise ConfigurationError("backend 'nccl' needs a CUDA GPU and this process sees none: use 'gloo'")
    visible = [v for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if len(visible) == 1 and device_count == 1:
        return torch.device("cuda", 0)
    local_world = environ.get("LOCAL_WORLD_SIZE", "")
    ranks_here = int(local_world) if local_world.isdigit() else local_rank + 1
    if ranks_here > device_count:
        shared = local_rank % device_count
        partners = [r for r in range(shared, max(ranks_here, local_rank + 1), device_count) if r != local_rank]
        raise ConfigurationError(
            f"{ranks_here} NCCL ranks on this machine but {device_count} GPU(s): local rank {local_rank} would share "
            f"cuda:{shared} with local rank(s) {', '.join(map(str, partners))}, which NCCL refuses. Start one rank per "
            f"GPU (torchrun --nproc-per-node {device_count}), or use backend 'gloo'"
        )
    return torch.device("cuda", local_rank)


def set_device_for_local_rank(cpu: bool, local_rank: int) -> None:
    """Today's fairchem's way: record the device type in ``CURRRENT_DEVICE_TYPE`` and bind
    GPU ``local_rank`` with ``torch.cuda.set_device`` (every GPU stays visible)."""
    if cpu:
        os.environ[CURRENT_DEVICE_TYPE_STR] = "cpu"
        return
    if not torch.cuda.is_available():
        raise ConfigurationError("cpu is false but no CUDA GPU is available: set cpu to true, or run where a GPU is")
    os.environ[CURRENT_DEVICE_TYPE_STR] = "cuda"
    torch.cuda.set_device(local_rank)


def current_device_string() -> str:
    """``"cpu"`` or ``"cuda:N"`` (the current GPU) as ``CURRRENT_DEVICE_TYPE`` says; when nothing
    was assigned, the best guess, recorded there, with a warning."""
    current = os.environ.get(CURRENT_DEVICE_TYPE_STR)
    if current is None:
        current = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        os.environ[CURRENT_DEVICE_TYPE_STR] = current
        logger.warning("assign_device_for_local_rank was never called: defaulting to %s", current)
        return current
    if current == "cpu":
        return "cpu"
    if torch.device(current).type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(f"{CURRENT_DEVICE_TYPE_STR}={current} but no CUDA GPU is available")
        return f"cuda:{torch.cuda.current_device()}"
    raise ValueError(f"unsupported device type: {current}")
