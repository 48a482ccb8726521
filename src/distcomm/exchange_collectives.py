"""The collectives with a root or a chunk per rank: reduce, gather, scatter, reduce_scatter and
all_to_all. They are methods of every :class:`~distcomm.Communicator` (this class is one of
its bases), with the rules of the others: every input kind where it makes sense, result
kinds that do not depend on the world size, and the same answer or the same clear error on
every rank.

Tensors travel as tensors (sizes are exchanged by distcomm, never given); chunks that are
not tensors (numbers, arrays, any picklable value) travel pickled. The steps are in
:mod:`~distcomm.wire.all_to_all`.

Tested by tests/test_exchange_collectives.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from distcomm.backends.handles import CompletedHandle, Handle, ThenHandle
from distcomm.collective_base import CollectiveBase
from distcomm.errors import InconsistentInputError, InvalidArgumentError
from distcomm.instrument.fingerprints import signature_of
from distcomm.instrument.hooks import Call, collective
from distcomm.values.conversion import readable
from distcomm.values.nested import map_leaves
from distcomm.values.ops import ReduceOp, ReduceOpLike
from distcomm.values.reduction_rules import NOT_ALONE, plan_reduction, reduce_if_alone, reduce_rows
from distcomm.wire import all_to_all as exchanging
from distcomm.wire import gather as gathering
from distcomm.wire import objects
from distcomm.wire import reduce as reducing
from distcomm.wire.all_to_all import OBJECTS, Sending


def any_shapes(call: Call) -> str:
    """What must match across ranks when shapes may differ per rank: dtypes and dimensions."""
    return signature_of(call.data, shapes=False)


def _is_tensor_list(chunks: Any) -> bool:
    return isinstance(chunks, Sequence) and not isinstance(chunks, (str, bytes)) and all(isinstance(c, torch.Tensor) for c in chunks)


class ExchangeCollectives(CollectiveBase):
    """reduce, gather, scatter, reduce_scatter and all_to_all."""

    @collective()
    def reduce(self, data: Any, dst: int = 0, op: ReduceOpLike = "sum") -> Any:
        """The reduction of every rank's ``data`` (as :meth:`all_reduce`) on ``dst``; ``None`` on the others.

        On ``dst`` a tensor is filled in place (the integer mean excepted, as in
        ``all_reduce``); the other ranks' data is left as it was. Ranks first agree on the
        layout, ``dst`` and ``op`` (one small collective, which carries small data), so a
        difference, or a bad argument on any rank, raises on every rank.
        """
        dst = self._root(dst, "dst", "reduce")
        reduce_op = self._op(op, "reduce")
        alone = reduce_if_alone(data, reduce_op, self.world_size)
        if alone is not NOT_ALONE:
            return alone
        if self.rank != dst:  # the reduction fills tensors in place: fill plain copies here
            data = map_leaves(lambda leaf: leaf.detach().clone() if isinstance(leaf, torch.Tensor) else leaf, data)
        result = reducing.reduce_structure(self._channel, data, reduce_op, f"reduce to {dst}")
        return result if self.rank == dst else None

    @collective(any_shapes)
    def gather(self, data: Any, dst: int = 0) -> list[Any] | None:
        """A list of every rank's ``data``, in rank order, on ``dst``; ``None`` on the others.
        Shapes may differ per rank and are never given (as :meth:`all_gather`)."""
        dst = self._root(dst, "dst", "gather")
        gathered = gathering.gather_data(self._channel, data, f"gather to {dst}")
        return gathered if self.rank == dst else None

    @collective(None)
    def scatter(self, chunks: Sequence[Any] | None, src: int = 0) -> Any:
        """This rank's entry of ``src``'s ``chunks`` (one per rank; read on ``src`` only, the others
        may pass ``None``). Tensor chunks may differ in shape and arrive as new tensors; other
        chunks arrive pickled, as :meth:`scatter_object` gives them."""
        src = self._root(src, "src", "scatter")
        operation = f"scatter from {src}"
        mine = Sending()
        if self.rank == src:
            mine = _stating(chunks, self.world_size, "scatter", objects_allowed=True)
        everyone = exchanging.agree_on_sizes(self._channel, mine, operation)
        if everyone[src].dtype == OBJECTS:
            payload = list(chunks) if self.rank == src and chunks is not None else None
            return objects.broadcast_object(self._channel, payload, src, "scatter")[self.rank]
        sent = exchanging.check_chunks(chunks, self.world_size, "scatter") if self.rank == src else None
        (received,) = exchanging.exchange(self._channel, sent, everyone, operation) or []
        return received.to(chunks[0].device if sent and chunks else self._channel.device)

    @collective(any_shapes)
    def all_to_all(self, chunks: Sequence[Any]) -> list[Any]:
        """Send ``chunks[i]`` to rank ``i``; return what every rank sent this one, in rank order.

        Tensor chunks may differ in shape per rank pair (every chunk of a call has one dtype,
        the same on every rank): the sizes are exchanged in one small step, then the data
        moves in one all-to-all. Other chunks travel pickled.
        """
        mine = _stating(chunks, self.world_size, "all_to_all", objects_allowed=True)
        everyone = exchanging.agree_on_sizes(self._channel, mine, "all_to_all")
        if any(entry.dtype == OBJECTS for entry in everyone):
            if any(entry.dtype != OBJECTS for entry in everyone):
                raise InconsistentInputError(
                    "all_to_all: some ranks pass tensors and others other values: "
                    + "; ".join(f"rank {r}: {'tensors' if e.dtype != OBJECTS else 'objects'}" for r, e in enumerate(everyone))
                )
            every_list = objects.all_gather_objects(self._channel, list(chunks), "all_to_all")
            return [sent[self.rank] for sent in every_list]
        tensors = exchanging.check_chunks(chunks, self.world_size, "all_to_all")  # checked: plain tensors
        received = exchanging.exchange(self._channel, tensors, everyone, "all_to_all") or []
        return [r.to(tensors[0].device) for r in received]

    @collective(any_shapes)
    def all_to_all_async(self, chunks: Sequence[torch.Tensor]) -> Handle:
        """Start :meth:`all_to_all` of tensor chunks; the handle's ``wait()`` returns the list.

        The sizes are exchanged first, at once (with the data itself when it is small, which
        then makes the handle synchronous); the data moves in the background.
        """
        mine = _stating(chunks, self.world_size, "all_to_all_async", objects_allowed=False)
        everyone = exchanging.agree_on_sizes(self._channel, mine, "all_to_all_async")
        tensors = exchanging.check_chunks(chunks, self.world_size, "all_to_all_async")  # checked: plain tensors
        device = tensors[0].device
        started = exchanging.start_exchange(self._channel, tensors, everyone, "all_to_all_async")
        return ThenHandle(started, lambda received: [r.to(device) for r in received])

    @collective()
    def reduce_scatter(self, chunks: Any, op: ReduceOpLike = "sum", *, dim: int = 0) -> Any:
        """Reduce entry ``i`` of every rank's ``chunks`` over all ranks onto rank ``i``; return this
        rank's, as a new value (the inputs are left alone).

        ``chunks`` is a list of one entry per rank; entry shapes may differ between entries
        but must agree across ranks. A single tensor is split along ``dim`` into one part per
        rank (uneven, the first parts larger, when the size does not divide). Tensors are
        reduced with the rules of :meth:`all_reduce` (an integer mean is floating), in rank
        order, so every rank computes the same bits; other entries reduce as ``all_reduce``
        reduces them. Ranks first agree on the entries' layout and ``op``, and a difference or
        a bad argument on any rank raises on every rank; except on the lone-tensor path: a
        tensor whose first dimension splits evenly, reduced in its own dtype, goes to the backend
        as it is, like ``all_reduce(tensor)``, and a difference there (another op, shape, dtype or
        ``dim``) is caught by :class:`~distcomm.CheckedCommunicator` only.
        """
        return self._reduce_scatter(chunks, op, dim, asynchronous=False).wait()

    @collective()
    def reduce_scatter_async(self, chunks: Any, op: ReduceOpLike = "sum", *, dim: int = 0) -> Handle:
        """Start :meth:`reduce_scatter`; the handle's ``wait()`` returns this rank's entry.

        A single tensor whose first dimension splits evenly, reduced in its own dtype, is
        reduced in the background; anything else is done at once
        (``handle.asynchronous`` is ``False``).
        """
        return self._reduce_scatter(chunks, op, dim, asynchronous=True)

    def _reduce_scatter(self, chunks: Any, op: ReduceOpLike, dim: int, *, asynchronous: bool) -> Handle:
        reduce_op = self._op(op, "reduce_scatter")
        if isinstance(chunks, torch.Tensor):
            self._parsed("reduce_scatter", lambda: _check_split(chunks, dim, "reduce_scatter"))
            alone = self._reduce_scatter_lone(chunks, reduce_op, dim, asynchronous)
            if alone is not None:
                return alone
            chunks = list(torch.tensor_split(chunks, self.world_size, dim))
        operation = f"reduce_scatter {reduce_op.value}"  # ranks with other ops are in another call
        if not _is_tensor_list(chunks) or not chunks:
            entries = list(chunks) if isinstance(chunks, Sequence) and not isinstance(chunks, (str, bytes)) else chunks
            # New values: the entries' tensors are left alone.
            result = reducing.reduce_structure(self._channel, entries, reduce_op, operation, detach=True)
            if not isinstance(entries, list) or len(entries) != self.world_size:
                raise InvalidArgumentError(f"reduce_scatter takes a list of one entry per rank ({self.world_size})")
            return CompletedHandle(result[self.rank])
        return CompletedHandle(self._reduce_scatter_tensors(list(chunks), reduce_op, operation))

    def _reduce_scatter_lone(self, tensor: torch.Tensor, op: ReduceOp, dim: int, asynchronous: bool) -> Handle | None:
        """The hot path, like a lone tensor's all_reduce: a tensor whose first dimension splits evenly,
        reduced in its own dtype, goes to the backend (as it is, or its values as a plain copy when it
        is a view of other strides or a lazy one) with no agreement: which path a rank takes depends
        only on what must match across ranks anyway (ranks that pass different shapes, dtypes, ops or
        dims here are caught by CheckedCommunicator)."""
        if dim not in (0, -tensor.dim()) or tensor.shape[0] % self.world_size:
            return None
        if not self._channel.accepts(tensor.device) or tensor.numel() == 0:
            return None
        try:
            plan = plan_reduction(tensor, tensor, op, "reduce_scatter")
        except InvalidArgumentError:
            return None  # refused: the agreed path says so on every rank
        if plan.transport_dtype != tensor.dtype or plan.mean_dtype not in (None, tensor.dtype):
            return None
        source = readable(tensor, "reduce_scatter").view(-1)
        output = torch.empty((tensor.shape[0] // self.world_size, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        if not asynchronous:
            self._backend.reduce_scatter(output.view(-1), source, plan.op)
            return CompletedHandle(output.div_(self.world_size) if plan.mean_dtype is not None else output)
        started = self._backend.reduce_scatter_async(output.view(-1), source, plan.op)
        return ThenHandle(started, lambda _: output.div_(self.world_size) if plan.mean_dtype is not None else output)

    def _reduce_scatter_tensors(self, chunks: list[torch.Tensor], op: ReduceOp, operation: str) -> torch.Tensor:
        mine, plan, carried = Sending(), None, []
        try:
            plain = exchanging.check_chunks(chunks, self.world_size, "reduce_scatter")
            plan = plan_reduction(chunks[0], chunks[0], op, "reduce_scatter")
            carried = [c.to(plan.transport_dtype) for c in plain]
            mine = exchanging.sending(carried, world_size=self.world_size)
        except InvalidArgumentError as error:
            mine = Sending(problem=str(error))
        everyone = exchanging.agree_on_sizes(self._channel, mine, operation)
        for rank, entry in enumerate(everyone):
            if entry.shapes != everyone[0].shapes:
                raise InconsistentInputError(
                    f"reduce_scatter: the entries' shapes differ across ranks: rank 0: {everyone[0].shapes}; "
                    f"rank {rank}: {entry.shapes}"
                )
        assert plan is not None  # a problem on this rank raised above
        home, shapes = chunks[self.rank], everyone[0].shapes or ()
        small = all(entry.inline is not None for entry in everyone) and self.world_size > 1  # the data rode along
        if not small and all(shape == shapes[0] for shape in shapes) and home.numel():  # equal entries: the backend's
            device = home.device if self._channel.accepts(home.device) else self._channel.device
            flat = exchanging.joined([c.to(device).reshape(-1) for c in carried])
            reduced = torch.empty(home.shape, dtype=plan.transport_dtype, device=device)
            self._backend.reduce_scatter(reduced.view(-1), flat, plan.op)
        else:
            received = exchanging.exchange(self._channel, carried, everyone, operation) or []
            rows = torch.stack(received)
            reduced = torch.empty_like(rows[0])
            reduce_rows(rows, plan.op, out=reduced)
        if plan.mean_dtype is not None:
            return reduced.to(plan.mean_dtype).div_(self.world_size).to(home.device)
        return reduced.to(home.dtype).to(home.device)


def _check_split(tensor: torch.Tensor, dim: Any, operation: str) -> None:
    """Refuse a ``dim`` that ``tensor`` cannot be split along (a 0-d tensor has none)."""
    if tensor.dim() == 0 or isinstance(dim, bool) or not isinstance(dim, int) or not -tensor.dim() <= dim < tensor.dim():
        raise InvalidArgumentError(f"{operation}: cannot split a tensor of shape {list(tensor.shape)} along dim {dim!r}")


def _stating(chunks: Any, world_size: int, operation: str, *, objects_allowed: bool) -> Sending:
    """What this rank says it sends: tensors (dtype and shapes), objects, or the problem."""
    try:
        if _is_tensor_list(chunks) and chunks:
            return exchanging.sending(exchanging.check_chunks(chunks, world_size, operation), world_size=world_size)
        if objects_allowed and isinstance(chunks, Sequence) and not isinstance(chunks, (str, bytes)):
            if len(chunks) != world_size:
                raise InvalidArgumentError(f"{operation}: chunks has {len(chunks)} entries; give one per rank ({world_size})")
            if any(isinstance(c, torch.Tensor) for c in chunks):
                raise InvalidArgumentError(f"{operation}: chunks mixes tensors and other values; pass all tensors or none")
            return Sending(OBJECTS)
        exchanging.check_chunks(chunks, world_size, operation)  # raises the clear error
    except InvalidArgumentError as error:
        return Sending(problem=str(error))
    return Sending(problem=f"{operation}: nothing to send")
