"""The asynchronous collectives: start a tensor collective, get a handle, wait on it later.

They are methods of every :class:`~distcomm.Communicator` (this class is one of its bases).
Where the backend cannot run a call in the background (a copy to another device, a dtype it
must convert, a mean that needs a division), the work is done at once and the handle says
so (``handle.asynchronous`` is ``False``).

Tested with the other collectives: tests/test_collectives.py, tests/test_hooks.py.
"""

from __future__ import annotations

import torch

from distcomm.backends.handles import CompletedHandle, Handle
from distcomm.collective_base import CollectiveBase
from distcomm.errors import InvalidArgumentError
from distcomm.instrument.fingerprints import signature_of
from distcomm.instrument.hooks import Call, collective, describe_filled
from distcomm.values.conversion import describe, is_plain
from distcomm.values.ops import ReduceOpLike, parse_reduce_op
from distcomm.values.reduction_rules import plan_reduction
from distcomm.wire import broadcast as broadcasting
from distcomm.wire import gather as gathering
from distcomm.wire import reduce as reducing


def gather_layout(call: Call) -> str:
    """What must match across ranks in a gather: dtypes and dimensions, and shapes when promised equal."""
    return signature_of(call.data, shapes=bool(call.argument("same_shape")))


class AsyncCollectives(CollectiveBase):
    """The asynchronous tensor collectives of a communicator."""

    @collective(describe_filled)
    def all_reduce_async(self, tensor: torch.Tensor, op: ReduceOpLike = "sum") -> Handle:
        """Start an in-place reduction of ``tensor``; the handle's ``wait()`` returns it.

        Where the backend cannot reduce it in the background (a copy to another device,
        a dtype it must convert, a mean that needs a division), the work is done at
        once and ``handle.asynchronous`` is ``False``.
        """
        reduce_op = parse_reduce_op(op)
        if not isinstance(tensor, torch.Tensor) or not self._channel.accepts(tensor.device) or not is_plain(tensor):
            return CompletedHandle(self._reduce(tensor, reduce_op))
        plan = plan_reduction(tensor, tensor, reduce_op, "all_reduce_async")
        if plan.transport_dtype != tensor.dtype or plan.mean_dtype is not None:
            return CompletedHandle(reducing.reduce_tensor(self._channel, tensor, reduce_op))
        return self._backend.all_reduce_async(tensor, plan.op)

    @collective(describe_filled)
    def broadcast_async(self, tensor: torch.Tensor, src: int = 0) -> Handle:
        """Start an in-place broadcast of ``tensor`` from ``src``; ``wait()`` returns it.

        A tensor the backend cannot take where it is is broadcast at once, through a
        copy (``handle.asynchronous`` is ``False``).
        """
        src = self._check_rank(src, "src", "broadcast_async")
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(f"broadcast_async takes a tensor, got {describe(tensor)}")
        if not self._channel.accepts(tensor.device) or not is_plain(tensor):
            broadcasting.fill_from(self._channel, tensor, src)
            return CompletedHandle(tensor)
        return self._backend.broadcast_async(tensor, src)

    @collective(gather_layout, local=("out",))
    def all_gather_async(self, tensor: torch.Tensor, *, same_shape: bool = False, out: torch.Tensor | None = None) -> Handle:
        """Start gathering ``tensor`` from every rank; ``wait()`` returns the list.

        Shapes may differ across ranks: they are exchanged first, synchronously (with
        the data itself for small tensors, which then makes the handle synchronous).
        Larger equal-shape data moves in the background. With ``same_shape=True`` (the
        promise of :meth:`all_gather`) nothing is exchanged first, and ``out`` may be given.
        """
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(f"all_gather_async takes a tensor, got {describe(tensor)}")
        if same_shape:
            return gathering.gather_same_shape_async(self._channel, tensor, out)
        if out is not None:
            raise InvalidArgumentError("all_gather_async: out is for same_shape=True, where every rank's shape is known")
        return gathering.gather_tensor(self._channel, tensor, asynchronous=True)
