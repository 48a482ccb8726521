"""Reduce-scatter: entry ``i`` of every rank's chunks reduced onto rank ``i``.

A list of entries (or a tensor split unevenly) is agreed first: ranks state their entries'
dtype and shapes in the call check, under a tag that names the op, so ranks with other ops,
shapes or bad input raise the same error on every rank; equal entries then take the backend's
reduce-scatter, others an all-to-all and a local reduction in rank order (the same bits on
every rank). A lone tensor whose first dimension splits evenly, reduced in its own dtype, goes
to the backend's reduce-scatter as it is, like ``all_reduce(tensor)``: with no agreement.

Tested by tests/test_exchange_collectives.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from distcomm.backends.handles import CompletedHandle, Handle, ThenHandle
from distcomm.errors import InconsistentInputError, InvalidArgumentError
from distcomm.values.conversion import readable
from distcomm.values.ops import ReduceOp
from distcomm.values.reduction_rules import plan_reduction, reduce_rows
from distcomm.wire import all_to_all
from distcomm.wire.reduce import reduce_structure

if TYPE_CHECKING:
    from distcomm.wire.context import WireContext


def check_split(tensor: torch.Tensor, dim: Any, operation: str) -> None:
    """Refuse a ``dim`` that ``tensor`` cannot be split along (a 0-d tensor has none)."""
    if tensor.dim() == 0 or isinstance(dim, bool) or not isinstance(dim, int) or not -tensor.dim() <= dim < tensor.dim():
        raise InvalidArgumentError(f"{operation}: cannot split a tensor of shape {list(tensor.shape)} along dim {dim!r}")


def start_reduce_scatter(context: WireContext, chunks: Any, op: ReduceOp, dim: int, *, asynchronous: bool) -> Handle:
    """This rank's entry, as a handle: in the background only on the lone-tensor path (when
    ``asynchronous``), else done at once. ``dim`` has been checked (:func:`check_split`)."""
    if isinstance(chunks, torch.Tensor):
        lone = _start_lone(context, chunks, op, dim, asynchronous)
        if lone is not None:
            return lone
        chunks = list(torch.tensor_split(chunks, context.world_size, dim))
    operation = f"reduce_scatter {op.value}"  # ranks with other ops are in another call
    if not all_to_all.is_tensor_list(chunks) or not chunks:
        entries = list(chunks) if isinstance(chunks, Sequence) and not isinstance(chunks, (str, bytes)) else chunks
        result = reduce_structure(context, entries, op, operation, detach=True)  # new values: the entries are left alone
        if not isinstance(entries, list) or len(entries) != context.world_size:
            raise InvalidArgumentError(f"reduce_scatter takes a list of one entry per rank ({context.world_size})")
        return CompletedHandle(result[context.rank])
    return CompletedHandle(_reduce_scatter_entries(context, list(chunks), op, operation))


def _start_lone(context: WireContext, tensor: torch.Tensor, op: ReduceOp, dim: int, asynchronous: bool) -> Handle | None:
    """The lone-tensor path, or ``None`` when ``tensor`` does not take it. Which path a rank takes
    depends only on what must match across ranks anyway (dim, shape, dtype, op, device type);
    a view of other strides, or a lazy one, goes as a plain copy of its values."""
    if dim not in (0, -tensor.dim()) or tensor.shape[0] % context.world_size:
        return None
    if not context.accepts(tensor.device) or tensor.numel() == 0:
        return None
    try:
        plan = plan_reduction(tensor, tensor, op, "reduce_scatter")
    except InvalidArgumentError:
        return None  # refused: the agreed path says so on every rank
    if plan.transport_dtype != tensor.dtype or plan.mean_dtype not in (None, tensor.dtype):
        return None
    source = readable(tensor, "reduce_scatter").view(-1)
    output = torch.empty((tensor.shape[0] // context.world_size, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)

    def finish(_: Any = None) -> torch.Tensor:
        return output.div_(context.world_size) if plan.mean_dtype is not None else output

    if not asynchronous:
        context.backend.reduce_scatter(output.view(-1), source, plan.op)
        return CompletedHandle(finish())
    return ThenHandle(context.backend.reduce_scatter_async(output.view(-1), source, plan.op), finish)


def _reduce_scatter_entries(context: WireContext, chunks: list[torch.Tensor], op: ReduceOp, operation: str) -> torch.Tensor:
    """Tensor entries, agreed first (dtype and shapes, the same on every rank)."""
    mine, plan, sent = all_to_all.Outgoing(), None, []
    try:
        plain = all_to_all.check_chunks(chunks, context.world_size, "reduce_scatter")
        plan = plan_reduction(chunks[0], chunks[0], op, "reduce_scatter")
        sent = [c.to(plan.transport_dtype) for c in plain]
        mine = all_to_all.outgoing(sent, world_size=context.world_size)
    except InvalidArgumentError as error:
        mine = all_to_all.Outgoing(problem=str(error))
    everyone = all_to_all.agree_on_sizes(context, mine, operation)
    for rank, entry in enumerate(everyone):
        if entry.shapes != everyone[0].shapes:
            raise InconsistentInputError(
                f"reduce_scatter: the entries' shapes differ across ranks: rank 0: {everyone[0].shapes}; rank {rank}: {entry.shapes}"
            )
    assert plan is not None  # a problem on this rank raised above
    own, shapes = chunks[context.rank], everyone[0].shapes or ()
    rode_along = all(entry.inline is not None for entry in everyone) and context.world_size > 1
    if not rode_along and all(shape == shapes[0] for shape in shapes) and own.numel():  # equal entries: the backend's
        device = own.device if context.accepts(own.device) else context.device
        flat = all_to_all.joined([c.to(device).reshape(-1) for c in sent])
        reduced = torch.empty(own.shape, dtype=plan.transport_dtype, device=device)
        context.backend.reduce_scatter(reduced.view(-1), flat, plan.op)
    else:
        received = all_to_all.all_to_all_chunks(context, sent, everyone, operation) or []
        rows = torch.stack(received)
        reduced = torch.empty_like(rows[0])
        reduce_rows(rows, plan.op, out=reduced)
    if plan.mean_dtype is not None:
        return reduced.to(plan.mean_dtype).div_(context.world_size).to(own.device)
    return reduced.to(own.dtype).to(own.device)
