"""Which device each process uses: the ``CURRRENT_DEVICE`` variable and GPU assignment."""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

CURRENT_DEVICE_STR = "CURRRENT_DEVICE"
"""Name of the environment variable holding this process's device type (sic: three R's)."""


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
