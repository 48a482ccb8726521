"""``ProfiledCommunicator``: a communicator whose every collective is timed (:class:`ProfileHook`),
with summaries: per operation and size, stragglers across ranks, and a report.

Tested by tests/debug/test_profiled.py.
"""

from __future__ import annotations

from typing import Any

from distcomm.communicator import Communicator
from distcomm.communicator_view import CommunicatorView
from distcomm.instrument.profile_hook import OpStats, ProfileHook, algorithm_bytes, bus_factor
from distcomm.wire.objects import all_gather_objects

__all__ = ["OpStats", "ProfileHook", "ProfiledCommunicator", "algorithm_bytes", "bus_factor"]


class ProfiledCommunicator(CommunicatorView):
    """``inner`` with a :class:`ProfileHook`: every collective's latency, per operation and size."""

    def __init__(self, inner: Communicator, *, synchronize_cuda: bool = False) -> None:
        if not isinstance(inner, Communicator):
            raise TypeError(f"ProfiledCommunicator wraps a Communicator, got {type(inner).__name__}")
        timed = any(isinstance(hook, ProfileHook) for hook in inner.hooks)  # DISTCOMM_PROFILE=1 attached one: time once
        super().__init__(inner, *(() if timed and not synchronize_cuda else (ProfileHook(synchronize_cuda=synchronize_cuda),)))

    @property
    def profile(self) -> ProfileHook:
        """The hook that times every call (its own, or the one ``inner`` had already)."""
        return next(hook for hook in reversed(self.hooks) if isinstance(hook, ProfileHook))

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
