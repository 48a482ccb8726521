"""All-to-all and scatter: every rank sends a chunk of its own size to every other (the steps of
``all_to_all``, ``scatter`` and ``reduce_scatter``).

Sizes are never given by the caller. Every rank first states what it sends (its dtype and
the shape of each chunk, or why it cannot take part) in one small exchange that opens like
every distcomm call, so ranks in another collective, with another dtype, or with bad input
all raise the same error on every rank before any data moves. Then the data moves in one
all-to-all of bytes, with every size known to all (exact for every dtype, since it only
copies).

Tested through the collectives that use it: tests/test_exchange_collectives.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch

from distcomm.backends.handles import CompletedHandle, Handle, ThenHandle
from distcomm.errors import InconsistentInputError, InvalidArgumentError, WireFormatError
from distcomm.values.conversion import describe, dtype_name, readable
from distcomm.values.dtypes import DTYPES
from distcomm.wire.call_check import body_room
from distcomm.wire.codec import max_payload_bytes
from distcomm.wire.objects import all_gather_objects, broadcast_object
from distcomm.wire.tensor_header import MAX_DIMENSIONS

if TYPE_CHECKING:
    from distcomm.wire.context import WireContext

_BY_NAME = {dtype_name(dtype): dtype for dtype in DTYPES}
OBJECTS = "object"
"""The dtype a rank states when its chunks are not tensors: they travel pickled."""


@attrs.frozen
class Outgoing:
    """What one rank says it sends: a dtype and one shape per destination (``None``: nothing to
    send, as a non-source rank of a scatter), or the problem that keeps it from taking part."""

    dtype: str | None = None
    shapes: tuple[tuple[int, ...], ...] | None = None
    problem: str | None = None
    inline: bytes | None = None
    """The chunks' bytes themselves, one after another, when they are small enough to ride along."""

    def as_wire(self) -> tuple[Any, ...]:
        return (self.dtype, self.shapes, self.problem, self.inline)


def check_chunks(chunks: Any, world_size: int, operation: str, name: str = "chunks") -> list[torch.Tensor]:
    """``chunks`` as a list of one plain tensor per rank (:func:`~distcomm.values.conversion.readable`), all of
    one dtype, or a clear error."""
    if isinstance(chunks, torch.Tensor) or not isinstance(chunks, Sequence) or isinstance(chunks, (str, bytes)):
        raise InvalidArgumentError(f"{operation} takes a list of one tensor per rank as {name}, got {describe(chunks)}")
    tensors: list[Any] = list(chunks)
    if len(tensors) != world_size:
        raise InvalidArgumentError(f"{operation}: {name} has {len(tensors)} entries; give one per rank ({world_size})")
    for i, chunk in enumerate(tensors):
        if not isinstance(chunk, torch.Tensor):
            raise InvalidArgumentError(f"{operation}: entry {i} of {name} is {describe(chunk)}; every entry must be a tensor")
        tensors[i] = readable(chunk, operation, f"entry {i}")
        if chunk.dim() > MAX_DIMENSIONS:
            raise InvalidArgumentError(f"{operation}: entry {i} has {chunk.dim()} dimensions; at most {MAX_DIMENSIONS}")
        if chunk.dtype != tensors[0].dtype:
            raise InvalidArgumentError(
                f"{operation}: entries 0 and {i} are {dtype_name(tensors[0].dtype)} and {dtype_name(chunk.dtype)}; "
                "every entry must have one dtype"
            )
    return tensors


def outgoing(chunks: list[torch.Tensor] | None, problem: str | None = None, world_size: int = 1) -> Outgoing:
    """What this rank sends, as it tells the others; small chunks ride along with the sizes (then
    the exchange needs no second collective)."""
    if problem is not None or chunks is None:
        return Outgoing(problem=problem)
    shapes = tuple(tuple(c.shape) for c in chunks)
    total = sum(c.numel() * c.element_size() for c in chunks)
    inline = None
    if world_size > 1 and total <= body_room(world_size) // 2:
        inline = b"".join(c.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for c in chunks)
    return Outgoing(dtype_name(chunks[0].dtype), shapes, inline=inline)


def agree_on_sizes(context: WireContext, mine: Outgoing, operation: str) -> list[Outgoing]:
    """Every rank's :class:`Outgoing`, checked the same way on every rank: a problem anywhere, or
    senders of different dtypes, raise the same error everywhere."""
    if context.world_size == 1:
        everyone = [mine]
    else:
        everyone = [_parse(entry, context.world_size, rank) for rank, entry in enumerate(all_gather_objects(context, mine.as_wire(), operation))]
    for rank, entry in enumerate(everyone):
        if entry.problem is not None:
            raise InvalidArgumentError(entry.problem if context.world_size == 1 else f"rank {rank}: {entry.problem}")
    dtypes = {entry.dtype for entry in everyone if entry.dtype is not None}
    if len(dtypes) > 1:
        listing = "; ".join(f"rank {r}: {e.dtype}" for r, e in enumerate(everyone) if e.dtype is not None)
        raise InconsistentInputError(f"{operation}: ranks send different dtypes ({listing}); every rank must send one dtype")
    _check_incoming(context, everyone, operation)
    return everyone


def _check_incoming(context: WireContext, everyone: list[Outgoing], operation: str) -> None:
    """Refuse, on every rank alike (each sees every rank's sizes), sizes that would make some rank
    allocate more than the codec's bound for what it receives."""
    limit = max_payload_bytes(context.object_codec)
    for receiver in range(context.world_size):
        incoming = [
            math.prod(e.shapes[receiver]) * _BY_NAME[e.dtype].itemsize if e.shapes is not None and e.dtype in _BY_NAME else 0
            for e in everyone
        ]
        if sum(incoming) > limit:
            senders = ", ".join(f"rank {r}: {n} bytes" for r, n in enumerate(incoming) if n)
            raise WireFormatError(
                f"{operation}: the sizes announced for rank {receiver} ({senders}) add up to more than the limit of "
                f"{limit} bytes a peer may make a rank allocate (the object codec's max_bytes); nothing was allocated"
            )


def _parse(entry: Any, world_size: int, rank: int) -> Outgoing:
    """A peer's :class:`Outgoing` from the wire, checked field by field."""
    try:
        dtype, shapes, problem, inline = entry
        if problem is not None:
            return Outgoing(problem=str(problem))
        if dtype is None and shapes is None:
            return Outgoing()
        if dtype == OBJECTS and shapes is None:
            return Outgoing(OBJECTS)
        if dtype not in _BY_NAME or len(shapes) != world_size:
            raise ValueError(f"dtype {dtype!r}, {len(shapes)} shapes")
        checked = tuple(tuple(_dimension(d) for d in shape) for shape in shapes if len(shape) <= MAX_DIMENSIONS)
        if len(checked) != world_size:
            raise ValueError("a shape with too many dimensions")
        if inline is not None:
            itemsize = torch.empty((), dtype=_BY_NAME[dtype]).element_size()
            if type(inline) is not bytes or len(inline) != sum(math.prod(shape) for shape in checked) * itemsize:
                raise ValueError("inline bytes that do not match the shapes")
        return Outgoing(dtype, checked, inline=inline)
    except (TypeError, ValueError) as error:
        raise WireFormatError(f"rank {rank} sent a malformed size header ({error})") from error


def _dimension(value: Any) -> int:
    if type(value) is not int or not 0 <= value < 2**62:
        raise ValueError(f"dimension {value!r}")
    return value


def all_to_all_chunks(context: WireContext, chunks: list[torch.Tensor] | None, everyone: list[Outgoing], operation: str) -> list[torch.Tensor] | None:
    """Move the chunks: rank ``j``'s ``chunks[i]`` arrives on rank ``i`` as entry ``j``. Returns
    what this rank received from each rank (entries of senders that sent nothing are absent:
    ``None`` when nobody sent)."""
    received: list[torch.Tensor] | None = start_all_to_all_chunks(context, chunks, everyone, operation).wait()
    return received


def start_all_to_all_chunks(context: WireContext, chunks: list[torch.Tensor] | None, everyone: list[Outgoing], operation: str) -> Handle:
    """:func:`exchange`, started: the handle's ``wait()`` returns what it returns (at once when
    nobody sent or the data rode with the sizes; else when the backend's all-to-all is done)."""
    rank = context.rank
    dtypes = [e.dtype for e in everyone if e.dtype is not None]
    if not dtypes:
        return CompletedHandle(None)
    dtype = _BY_NAME[dtypes[0]]
    itemsize = torch.empty((), dtype=dtype).element_size()
    incoming = [None if e.shapes is None else torch.Size(e.shapes[rank]) for e in everyone]
    if context.world_size > 1 and all(e.inline is not None for e in everyone if e.shapes is not None):
        return CompletedHandle([_inline_part(e, rank, dtype, itemsize) for e in everyone if e.shapes is not None])
    out_sizes = [0 if shape is None else shape.numel() * itemsize for shape in incoming]
    device = context.device if chunks is None or not context.accepts(chunks[0].device) else chunks[0].device
    if chunks is None:
        flat = torch.empty(0, dtype=torch.uint8, device=device)
        in_sizes = [0] * context.world_size
    else:
        parts = [c.detach().to(device).contiguous().reshape(-1).view(torch.uint8) for c in chunks]
        flat = joined(parts) if parts else torch.empty(0, dtype=torch.uint8, device=device)
        in_sizes = [p.numel() for p in parts]
    output = torch.empty(sum(out_sizes), dtype=torch.uint8, device=device)

    def cut(output: torch.Tensor) -> list[torch.Tensor]:
        received, offset = [], 0
        for shape, size in zip(incoming, out_sizes):
            if shape is not None:
                received.append(output[offset : offset + size].view(dtype).reshape(shape))
            offset += size
        return received

    return ThenHandle(context.backend.all_to_all_async(output, flat, out_sizes, in_sizes), cut)


def _inline_part(entry: Outgoing, rank: int, dtype: torch.dtype, itemsize: int) -> torch.Tensor:
    """What ``entry``'s sender sent rank ``rank``, cut from the bytes that rode with its sizes."""
    assert entry.shapes is not None and entry.inline is not None
    sizes = [math.prod(shape) * itemsize for shape in entry.shapes]
    start = sum(sizes[:rank])
    raw = bytearray(entry.inline[start : start + sizes[rank]])
    flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return flat.view(dtype).reshape(entry.shapes[rank])


def joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """``parts`` (flat, contiguous, one dtype) as one flat tensor: a view when they already lie one
    after another in one storage (as the pieces of ``tensor.split(...)`` do), else a copy."""
    first = parts[0]
    storage = first.untyped_storage().data_ptr()
    end = first.data_ptr()
    for part in parts:
        if part.data_ptr() != end or part.untyped_storage().data_ptr() != storage:
            return torch.cat(parts)
        end += part.numel() * part.element_size()
    return first.as_strided((sum(p.numel() for p in parts),), (1,))


def is_tensor_list(chunks: Any) -> bool:
    """Whether ``chunks`` is a sequence of tensors only (not a string)."""
    return isinstance(chunks, Sequence) and not isinstance(chunks, (str, bytes)) and all(isinstance(c, torch.Tensor) for c in chunks)


def outgoing_of(chunks: Any, world_size: int, operation: str, *, objects_allowed: bool) -> Outgoing:
    """What this rank says it sends of ``chunks``: tensors (dtype and shapes), objects, or the problem."""
    try:
        if is_tensor_list(chunks) and chunks:
            return outgoing(check_chunks(chunks, world_size, operation), world_size=world_size)
        if objects_allowed and isinstance(chunks, Sequence) and not isinstance(chunks, (str, bytes)):
            if len(chunks) != world_size:
                raise InvalidArgumentError(f"{operation}: chunks has {len(chunks)} entries; give one per rank ({world_size})")
            if any(isinstance(c, torch.Tensor) for c in chunks):
                raise InvalidArgumentError(f"{operation}: chunks mixes tensors and other values; pass all tensors or none")
            return Outgoing(OBJECTS)
        check_chunks(chunks, world_size, operation)  # raises the clear error
    except InvalidArgumentError as error:
        return Outgoing(problem=str(error))
    return Outgoing(problem=f"{operation}: nothing to send")


def scatter(context: WireContext, chunks: Sequence[Any] | None, src: int) -> Any:
    """This rank's entry of ``src``'s ``chunks``: a new tensor (shapes may differ), or an object that
    travels pickled. Ranks with another ``src`` are in another call."""
    operation = f"scatter from {src}"
    mine = outgoing_of(chunks, context.world_size, "scatter", objects_allowed=True) if context.rank == src else Outgoing()
    everyone = agree_on_sizes(context, mine, operation)
    if everyone[src].dtype == OBJECTS:
        payload = list(chunks) if context.rank == src and chunks is not None else None
        return broadcast_object(context, payload, src, "scatter")[context.rank]
    sent = check_chunks(chunks, context.world_size, "scatter") if context.rank == src else None
    (received,) = all_to_all_chunks(context, sent, everyone, operation) or []
    return received.to(sent[0].device if sent else context.device)


def all_to_all(context: WireContext, chunks: Sequence[Any]) -> list[Any]:
    """What every rank sent this one: ``chunks[i]`` goes to rank ``i``; tensor sizes may differ per
    pair (exchanged first), other values travel pickled."""
    everyone = agree_on_sizes(context, outgoing_of(chunks, context.world_size, "all_to_all", objects_allowed=True), "all_to_all")
    if any(entry.dtype == OBJECTS for entry in everyone):
        if any(entry.dtype != OBJECTS for entry in everyone):
            raise InconsistentInputError(
                "all_to_all: some ranks pass tensors and others other values: "
                + "; ".join(f"rank {r}: {'tensors' if e.dtype != OBJECTS else 'objects'}" for r, e in enumerate(everyone))
            )
        every_list = all_gather_objects(context, list(chunks), "all_to_all")
        return [sent[context.rank] for sent in every_list]
    tensors = check_chunks(chunks, context.world_size, "all_to_all")  # checked: plain tensors
    received = all_to_all_chunks(context, tensors, everyone, "all_to_all") or []
    return [r.to(tensors[0].device) for r in received]


def start_all_to_all(context: WireContext, chunks: Sequence[torch.Tensor]) -> Handle:
    """:func:`all_to_all` of tensor chunks, its data moving in the background once the sizes are agreed."""
    operation = "all_to_all_async"
    everyone = agree_on_sizes(context, outgoing_of(chunks, context.world_size, operation, objects_allowed=False), operation)
    tensors = check_chunks(chunks, context.world_size, operation)  # checked: plain tensors
    device = tensors[0].device
    started = start_all_to_all_chunks(context, tensors, everyone, operation)
    return ThenHandle(started, lambda received: [r.to(device) for r in received])
