"""The object collectives: one picklable object per rank, in torch's names.

``<collective>_object`` moves one object per rank; ``broadcast_object_list`` fills a list
in place. They are methods of every :class:`~distcomm.Communicator` (this class is its
base); the wire format is in :mod:`distcomm.wire.objects`.

Tested with the object collectives: tests/test_collectives.py, tests/test_serialization.py,
tests/test_opening.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, TypeVar, cast

import torch

from distcomm.collective_base import CollectiveBase
from distcomm.errors import InvalidArgumentError
from distcomm.instrument.hooks import collective
from distcomm.values.conversion import check_rank, describe
from distcomm.wire import objects as wire
from distcomm.wire.layout_agreement import Claim, agree

T = TypeVar("T")
DeviceLike = torch.device | str | None


class ObjectCollectives(CollectiveBase):
    """The object collectives of a communicator, over its channel."""

    @collective(None, local=("device",))
    def all_gather_object(self, obj: T, *, device: DeviceLike = None) -> list[T]:
        """Every rank's picklable ``obj``, in rank order, on every rank.

        Small payloads (under about 4 KB) take one collective; larger ones two. An
        object that cannot be pickled on one rank raises on every rank.
        """
        return wire.all_gather_objects(self._channel, obj, "all_gather_object", device)

    @collective(None, local=("device",))
    def gather_object(self, obj: T, dst: int = 0, *, device: DeviceLike = None) -> list[T] | None:
        """Every rank's picklable ``obj`` as a list on rank ``dst``; ``None`` on the others."""
        dst = check_rank(dst, "dst", "gather_object", self.world_size)
        payloads = wire.exchange(self._channel, obj, "gather_object", device)
        return [self._channel.object_codec.decode(p) for p in payloads] if self.rank == dst else None

    @collective(None, local=("device",))
    def broadcast_object(self, obj: T, src: int = 0, *, device: DeviceLike = None) -> T:
        """Return ``src``'s picklable ``obj`` on every rank (``src`` gets its own object back).

        An object that cannot be pickled on ``src`` raises on every rank.
        """
        src = check_rank(src, "src", "broadcast_object", self.world_size)
        return cast(T, wire.broadcast_object(self._channel, obj, src, "broadcast_object", device))

    @collective(None, local=("device",))
    def broadcast_object_list(self, object_list: list[Any], src: int = 0, *, device: DeviceLike = None) -> None:
        """Replace, in place, the items of ``object_list`` on every rank by ``src``'s items.

        Every rank must pass a list; a rank that does not makes every rank raise.
        """
        src = check_rank(src, "src", "broadcast_object_list", self.world_size)
        problem = None
        if not isinstance(object_list, list):
            problem = f"broadcast_object_list needs a list to fill in place, got {describe(object_list)}"
        if self.world_size > 1:
            agree(self._channel, "broadcast_object_list", Claim((), problem=problem))
        elif problem is not None:
            raise InvalidArgumentError(problem)
        received = wire.broadcast_object(self._channel, object_list, src, "broadcast_object_list", device)
        if received is not object_list:
            object_list[:] = received

    @collective(None)
    def scatter_object(self, objects: Sequence[T] | None, src: int = 0) -> T:
        """Give rank ``i`` the item ``objects[i]`` of ``src``'s sequence (others pass ``None``).

        A ``src`` sequence of the wrong length fails on every rank, not only on ``src``.
        """
        src = check_rank(src, "src", "scatter_object", self.world_size)
        problem = wire.scatter_problem(self._channel, objects, src)
        payload = list(objects or []) if problem is None else None
        received = wire.broadcast_object(self._channel, payload, src, "scatter_object", problem=problem)
        return received[self.rank]  # type: ignore[no-any-return]

    def all_gather_objects(self, obj: T, *, device: DeviceLike = None) -> list[T]:
        """Deprecated name of :meth:`all_gather_object` (kept for one release)."""
        _deprecated("all_gather_objects", "all_gather_object")
        return self.all_gather_object(obj, device=device)

    def gather_objects(self, obj: T, dst: int = 0, *, device: DeviceLike = None) -> list[T] | None:
        """Deprecated name of :meth:`gather_object` (kept for one release)."""
        _deprecated("gather_objects", "gather_object")
        return self.gather_object(obj, dst, device=device)

    def scatter_objects(self, objects: Sequence[T] | None, src: int = 0) -> T:
        """Deprecated name of :meth:`scatter_object` (kept for one release)."""
        _deprecated("scatter_objects", "scatter_object")
        return self.scatter_object(objects, src)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"Communicator.{old} is deprecated: call {new} (same arguments)", DeprecationWarning, stacklevel=3)
