"""``ProfileHook``: count, bytes and latency of every collective, per operation and size.

It only reads the clock around each call: no synchronization is forced unless you
ask for it (``synchronize_cuda=True`` waits for the GPU before and after each op,
for device-accurate latency). ``DISTCOMM_PROFILE=1`` attaches it to every
communicator (:mod:`distcomm.instrument.switches`); when off, nothing is attached and nothing is paid.

Bandwidths follow nccl-tests: algorithm bandwidth is bytes / time (for gathers, the
bytes of all ranks); bus bandwidth scales it by what each link carries:
``2(n-1)/n`` for all-reduce, ``(n-1)/n`` for all-gather, ``1`` for broadcast.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import torch

from distcomm.instrument.hooks import Call, Hook


@attrs.define
class OpStats:
    """Running statistics of one (operation, message size)."""

    count: int = 0
    total_seconds: float = 0.0
    min_seconds: float = float("inf")
    max_seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total_seconds += seconds
        self.min_seconds = min(self.min_seconds, seconds)
        self.max_seconds = max(self.max_seconds, seconds)

    @property
    def mean_seconds(self) -> float:
        return self.total_seconds / self.count if self.count else 0.0


def bus_factor(operation: str, world_size: int) -> float:
    """How much more than the algorithm bandwidth each link carries (nccl-tests)."""
    n = world_size
    if operation.startswith(("all_reduce", "reduce_dict")):
        return 2 * (n - 1) / n
    if operation.startswith(("all_gather", "reduce_scatter", "all_to_all")):
        return (n - 1) / n
    return 1.0


def algorithm_bytes(operation: str, size: int, world_size: int) -> int:
    """The bytes an operation moves in total, as nccl-tests counts them."""
    return size * world_size if operation.startswith("all_gather") else size


class ProfileHook(Hook):
    """Times every collective and keeps :class:`OpStats` per (operation, message size)."""

    order = 100  # closest to the call: checks and other hooks are not timed

    def __init__(self, *, synchronize_cuda: bool = False) -> None:
        self.synchronize_cuda = synchronize_cuda and torch.cuda.is_available()
        self.stats: dict[tuple[str, int], OpStats] = {}
        self._started: list[float] = []

    def for_split(self, child: Any) -> Hook:
        return ProfileHook(synchronize_cuda=self.synchronize_cuda)

    def before(self, call: Call) -> None:
        if self.synchronize_cuda:
            torch.cuda.synchronize()
        self._started.append(time.perf_counter())

    def after(self, call: Call, error: BaseException | None) -> None:
        if self.synchronize_cuda and error is None:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._started.pop()
        if error is not None:
            return
        key = (call.operation, call.payload_bytes)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = OpStats()
        stats.add(elapsed)
