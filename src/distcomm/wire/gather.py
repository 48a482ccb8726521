"""Gathers: every rank's tensor (of any shape), number or nested data, on every rank.

The wire format of a tensor gather: each rank's opening (:mod:`distcomm.wire.call_check`) is
a header (number of dimensions, dtype code, shape) and, when the tensor is small, the
tensor's bytes too. Large tensors of one dtype and shape everywhere pass on the check alone
and then move in one gather; openings that differ (small tensors, whose bytes differ, or
different shapes) take the check's second step, which shows every rank every header and
small tensor, and larger data then moves (padded on backends that cannot gather uneven
sizes). A rank that cannot take part (a dtype or number of dimensions no header can
describe) says so in its header, and every rank raises the same error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distcomm.backends.handles import CompletedHandle, Handle, ThenHandle
from distcomm.errors import InconsistentInputError, InvalidArgumentError, WireFormatError
from distcomm.values.conversion import describe, dtype_name
from distcomm.values.dtypes import DTYPE_CODES
from distcomm.values.nested import flatten, is_container, unflatten
from distcomm.wire.call_check import CallSlots, body_room, check_call, gather_slots, holds, refuse
from distcomm.wire.codec import max_payload_bytes
from distcomm.wire.layout_agreement import gather_claims
from distcomm.wire.mismatch import by_rank, explain
from distcomm.wire.objects import all_gather_objects, all_gather_payloads
from distcomm.wire.tensor_header import WORDS, header_words, read_tensor_header, unsupported

if TYPE_CHECKING:
    from distcomm.wire.context import WireContext



def gather_data(context: WireContext, data: Any, operation: str) -> list[Any]:
    """Every rank's ``data``: tensors of any shape, other values through pickle, containers leaf by leaf.
    ``operation`` names the call in its slots (``all_gather``, ``gather to 1``)."""
    if isinstance(data, torch.Tensor):
        return gather_tensor(context, data, asynchronous=False, operation=operation).wait()  # type: ignore[no-any-return]
    if not is_container(data):
        return all_gather_objects(context, data, operation)
    leaves, paths, spec = flatten(data)
    skeleton = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
    tensors = tuple(i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor))
    per_rank = [context.object_codec.decode(p) for p in all_gather_payloads(context, (spec, skeleton, tensors), operation, step="structure")]
    for rank, entry in enumerate(per_rank):
        if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[1], list) and isinstance(entry[2], tuple)):
            raise WireFormatError(f"{operation}: rank {rank} sent a malformed structure: {entry!r:.80}")
    if any(rank_spec != spec for rank_spec, _, _ in per_rank):
        raise InconsistentInputError(
            f"{operation}: ranks passed differently shaped structures: "
            + "; ".join(f"rank {r}: {s}" for r, (s, _, _) in enumerate(per_rank))
        )
    for rank, (_, rank_leaves, rank_tensors) in enumerate(per_rank):
        if len(rank_leaves) != len(leaves) or not set(rank_tensors) <= set(range(len(leaves))):
            raise WireFormatError(f"{operation}: rank {rank} sent leaves that do not fit its structure")
    if any(rank_tensors != tensors for _, _, rank_tensors in per_rank):
        where = min(set().union(*(set(t) for _, _, t in per_rank)) - set.intersection(*(set(t) for _, _, t in per_rank)))
        kinds = ["tensor" if where in t else type(skel[where]).__name__ for _, skel, t in per_rank]
        raise InconsistentInputError(
            f"{operation}: ranks passed a tensor at {paths[where] or 'the top level'} where others did not: {by_rank(kinds)}"
        )
    columns = {i: gather_tensor(context, leaves[i], asynchronous=False, operation=operation).wait() for i in tensors}
    return [
        unflatten(spec, [columns[i][r] if i in columns else v for i, v in enumerate(rank_leaves)])
        for r, (_, rank_leaves, _) in enumerate(per_rank)
    ]


def gather_same_shape(context: WireContext, tensor: Any, operation: str, out: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Every rank's ``tensor``, promised to have one shape and dtype everywhere: one collective,
    into ``out`` when given (then the entries are views of it)."""
    buffer = _same_shape_buffer(context, tensor, operation, out)
    if context.world_size == 1:  # the only rank's tensor: a copy, with no collective to wait for
        return [buffer.clone() if out is None else out[0].copy_(buffer)]
    gathered = context.backend.all_gather(buffer, out)
    return list((gathered if buffer is tensor else gathered.to(tensor.device)).unbind(0))


def gather_same_shape_async(context: WireContext, tensor: torch.Tensor, out: torch.Tensor | None = None) -> Handle:
    """:func:`gather_same_shape` in the background."""
    buffer = _same_shape_buffer(context, tensor, "all_gather_async", out)
    device_of_input = tensor.device
    return ThenHandle(context.backend.all_gather_async(buffer, out), lambda gathered: list(gathered.to(device_of_input).unbind(0)))


def _same_shape_buffer(context: WireContext, tensor: Any, operation: str, out: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise InvalidArgumentError(f"{operation}(same_shape=True) takes a tensor, got {describe(tensor)}")
    if tensor.dtype not in DTYPE_CODES:
        raise InvalidArgumentError(f"{operation} does not support dtype {tensor.dtype}; convert the tensor first")
    buffer = context.sendable(tensor, operation)  # detached: the result never joins the autograd graph
    if out is not None:
        wanted = (context.world_size, *tensor.shape)
        if (
            not isinstance(out, torch.Tensor) or tuple(out.shape) != wanted or out.dtype != tensor.dtype
            or out.device != buffer.device or not out.is_contiguous() or buffer.device != tensor.device
        ):  # fmt: skip
            raise InvalidArgumentError(
                f"{operation}: out must be a contiguous {dtype_name(tensor.dtype)}{list(wanted)} "
                f"tensor on {tensor.device} (world size first, then the input's shape), for an input the backend "
                f"takes where it is; got {describe(out)}"
            )
    return buffer


def gather_tensor(context: WireContext, tensor: torch.Tensor, *, asynchronous: bool, operation: str = "all_gather") -> Handle:
    """Gather tensors of any shapes: one collective when every rank's tensor is small, else
    the headers then the data, which moves asynchronously when asked and shapes are equal.
    The handle's result is a list of new tensors on ``tensor``'s device."""
    backend = context.backend
    try:
        buffer = context.sendable(tensor, operation)  # a gather is not differentiable: never the graph
    except InvalidArgumentError as error:  # a meta tensor: every rank raises it
        refuse(context, operation, str(error))
    inline, shapes = gather_headers(context, buffer, operation)
    device_of_input = tensor.device
    if inline is not None:
        return CompletedHandle([t.to(device_of_input) for t in inline])
    if all(s == shapes[0] for s in shapes):
        if asynchronous:
            return ThenHandle(backend.all_gather_async(buffer), lambda out: [row.to(device_of_input) for row in out.unbind(0)])
        gathered = list(backend.all_gather(buffer).unbind(0))
    else:
        gathered = backend.all_gather_uneven(buffer, shapes)
    return CompletedHandle(gathered if buffer is tensor else [g.to(device_of_input) for g in gathered])


HEADER_BYTES = 8 * WORDS
"""A tensor header's size in bytes."""

_HEADERS: dict[tuple[torch.dtype, torch.Size], bytes] = {}
"""The header of each dtype and shape gathered, as it travels (made once)."""


def _header_bytes(tensor: torch.Tensor) -> bytes:
    key = (tensor.dtype, tensor.shape)
    known = _HEADERS.get(key)
    if known is None:
        known = header_words(tensor).tobytes()
        if len(_HEADERS) < 1024:
            _HEADERS[key] = known
    return known


def gather_headers(context: WireContext, tensor: torch.Tensor, operation: str = "all_gather") -> tuple[list[torch.Tensor] | None, list[torch.Size]]:
    """Every rank's shape, and every rank's tensor too when all of them fit in the opening slot.

    Different dtypes or numbers of dimensions, or a refusal, raise the same clear error
    on every rank, since every rank sees every header; a header that breaks the wire
    format (a dimension out of bounds, an unknown dtype code) is a
    :class:`~distcomm.errors.WireFormatError`.
    """
    problem = unsupported(tensor, operation)
    world = context.world_size
    fits = problem is None and tensor.numel() * tensor.element_size() <= body_room(world) - HEADER_BYTES
    if problem is None and not fits and world > 1:  # the opening is the header alone
        head = _header_bytes(tensor)
        if holds(context, operation, "tensor", head):  # the usual case: every rank's shape is this one
            return None, [tensor.shape] * world
        slots = gather_slots(context, operation, "tensor", head, tensor.device)  # the check's second step
    else:
        header = header_words(None if problem else tensor)
        slots = check_call(context, operation, "tensor", header.view(np.uint8), tensor if fits else None, tensor.device)
    if slots.uniform:  # the check held: every rank's header is this rank's, read once at any world size
        headers = [_read_header(context, slots, context.rank, operation)] * context.world_size
    else:
        headers = [_read_header(context, slots, rank, operation) for rank in range(context.world_size)]
    if any(h is None for h in headers):
        claims = gather_claims(context, operation, (problem, ()))
        raise InconsistentInputError(explain(operation, claims))
    dtypes = [dtype for dtype, _, _ in headers]  # type: ignore[misc]
    shapes = [shape for _, shape, _ in headers]  # type: ignore[misc]
    if len(set(dtypes)) > 1 or len({len(s) for s in shapes}) > 1:
        listing = "; ".join(f"rank {r}: {dtype_name(d)}{list(s)}" for r, (d, s) in enumerate(zip(dtypes, shapes)))
        raise InconsistentInputError(
            f"{operation}: every rank must pass the same dtype and number of dimensions ({listing}); "
            "convert with .to(dtype) or reshape before gathering"
        )
    if not all(is_inline for _, _, is_inline in headers):  # type: ignore[misc]
        return None, shapes
    start = HEADER_BYTES
    sizes = [shape.numel() * tensor.element_size() for shape in shapes]
    rows = slots.data(start, max(sizes))
    return [row[:n].view(tensor.dtype).reshape(shape).clone() for row, n, shape in zip(rows, sizes, shapes)], shapes


def _read_header(context: WireContext, slots: CallSlots, rank: int, operation: str = "all_gather") -> tuple[torch.dtype, torch.Size, bool] | None:
    """``rank``'s dtype, shape and whether its data came inline; ``None`` for a refusal.
    Anything outside the wire format raises :class:`~distcomm.errors.WireFormatError`."""
    words = slots.words(rank, WORDS)
    if words is None:
        raise WireFormatError(f"{operation}: rank {rank} sent a tensor header of {slots.sizes[rank]} bytes")
    announced = read_tensor_header(words, f"{operation}: rank {rank}", max_payload_bytes(context.object_codec))
    if announced is None:
        return None
    dtype, shape, nbytes = announced
    body = slots.sizes[rank] - 8 * WORDS
    if body not in (0, nbytes):
        raise WireFormatError(f"{operation}: rank {rank} announced {nbytes} bytes of tensor data and sent {body}")
    return dtype, shape, body == nbytes


def start_gather(context: WireContext, tensor: torch.Tensor, same_shape: bool, out: torch.Tensor | None) -> Handle:
    """A gather of ``tensor`` whose data moves in the background: one collective when shapes are
    promised equal (``same_shape``, then into ``out`` when given), else the headers first."""
    if same_shape:
        return gather_same_shape_async(context, tensor, out)
    if out is not None:
        raise InvalidArgumentError("all_gather_async: out is for same_shape=True, where every rank's shape is known")
    return gather_tensor(context, tensor, asynchronous=True)
