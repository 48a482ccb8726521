"""``ProfiledCommunicator``: count, bytes and latency of every collective, per operation and size.

It only reads the clock around each call: no synchronization is forced unless you
ask for it (``synchronize_cuda=True`` waits for the GPU before and after each op,
for device-accurate latency). ``DISTCOMM_PROFILE=1`` switches it on for the active
communicator; when off, nothing is wrapped and nothing is paid.

Bandwidths follow nccl-tests: algorithm bandwidth is bytes / time (for gathers, the
bytes of all ranks); bus bandwidth scales it by what each link carries:
``2(n-1)/n`` for all-reduce, ``(n-1)/n`` for all-gather, ``1`` for broadcast.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import torch

from distcomm.communicator import Communicator
from distcomm.communicator_view import CommunicatorView
from distcomm.instrument.hooks import Call, Hook
from distcomm.wire.objects import all_gather_objects


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


class ProfiledCommunicator(CommunicatorView):
    """``inner`` with a :class:`ProfileHook`: every collective's latency, per operation and size."""

    def __init__(self, inner: Communicator, *, synchronize_cuda: bool = False) -> None:
        if not isinstance(inner, Communicator):
            raise TypeError(f"ProfiledCommunicator wraps a Communicator, got {type(inner).__name__}")
        super().__init__(inner, ProfileHook(synchronize_cuda=synchronize_cuda))

    @property
    def profile(self) -> ProfileHook:
        """The hook that times every call."""
        return next(hook for hook in self._hook_chain.own if isinstance(hook, ProfileHook))

    @property
    def synchronize_cuda(self) -> bool:
        return self.profile.synchronize_cuda

    @property
    def stats(self) -> dict[tuple[str, int], OpStats]:
        return self.profile.stats

    def reset(self) -> None:
        self.stats.clear()

    def summary(self) -> list[dict[str, Any]]:
        """One dict per (operation, message size): op, bytes, count, latencies in microseconds,
        algbw and busbw in GB/s."""
        rows = []
        n = self.world_size
        for (operation, size), stats in sorted(self.stats.items()):
            mean = stats.mean_seconds
            algbw = algorithm_bytes(operation, size, n) / mean / 1e9 if mean > 0 else 0.0
            rows.append(
                {
                    "op": operation,
                    "bytes": size,
                    "count": stats.count,
                    "total_bytes": size * stats.count,
                    "mean_us": mean * 1e6,
                    "min_us": stats.min_seconds * 1e6,
                    "max_us": stats.max_seconds * 1e6,
                    "algbw_gbps": algbw,
                    "busbw_gbps": algbw * bus_factor(operation, n),
                }
            )
        return rows

    def stragglers(self) -> list[dict[str, Any]]:
        """A collective: every rank's mean latency per op and size minus the fastest rank's.

        The rank whose own latency is lowest arrived last (it waited least): a large
        gap on the others points at it. Returns rows with ``op``, ``bytes``,
        ``mean_us`` per rank, and ``wait_us`` (own minus the minimum) per rank.
        """
        mine = {f"{op}\0{size}": s.mean_seconds for (op, size), s in self.stats.items()}
        everyone = all_gather_objects(self._context, mine, "stragglers")
        rows = []
        for key in sorted(set().union(*everyone)):
            op, size = key.split("\0")
            means = [ranks.get(key) for ranks in everyone]
            known = [m for m in means if m is not None]
            fastest = min(known)
            rows.append(
                {
                    "op": op,
                    "bytes": int(size),
                    "mean_us": [None if m is None else m * 1e6 for m in means],
                    "wait_us": [None if m is None else (m - fastest) * 1e6 for m in means],
                    "last_to_arrive": means.index(fastest),
                }
            )
        return rows

    def report(self) -> str:
        """The summary as a table, in the style of nccl-tests."""
        header = f"{'op':<22}{'bytes':>12}{'count':>8}{'mean us':>11}{'min us':>10}{'max us':>10}{'algbw GB/s':>12}{'busbw GB/s':>12}"
        lines = [f"# distcomm profile: rank {self.rank} of {self.world_size} ({self.backend})", header]
        for row in self.summary():
            lines.append(
                f"{row['op']:<22}{row['bytes']:>12}{row['count']:>8}{row['mean_us']:>11.1f}{row['min_us']:>10.1f}"
                f"{row['max_us']:>10.1f}{row['algbw_gbps']:>12.4f}{row['busbw_gbps']:>12.4f}"
            )
        return "\n".join(lines)
