"""Exchanges in which every rank sends a tensor of its own size to every other: the steps of
``all_to_all``, ``scatter`` and ``reduce_scatter``.

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
from distcomm.wire.objects import all_gather_objects

if TYPE_CHECKING:
    from distcomm.wire.context import Channel

MAX_DIMENSIONS = 16
"""The most dimensions a chunk may have (as in every distcomm header)."""
_BY_NAME = {dtype_name(dtype): dtype for dtype in DTYPES}
OBJECTS = "object"
"""The dtype a rank states when its chunks are not tensors: they travel pickled."""


@attrs.frozen
class Sending:
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


def sending(chunks: list[torch.Tensor] | None, problem: str | None = None, world_size: int = 1) -> Sending:
    """What this rank sends, as it tells the others; small chunks ride along with the sizes (then
    the exchange needs no second collective)."""
    if problem is not None or chunks is None:
        return Sending(problem=problem)
    shapes = tuple(tuple(c.shape) for c in chunks)
    total = sum(c.numel() * c.element_size() for c in chunks)
    inline = None
    if world_size > 1 and total <= body_room(world_size) // 2:
        inline = b"".join(c.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for c in chunks)
    return Sending(dtype_name(chunks[0].dtype), shapes, inline=inline)


def agree_on_sizes(channel: Channel, mine: Sending, operation: str) -> list[Sending]:
    """Every rank's :class:`Sending`, checked the same way on every rank: a problem anywhere, or
    senders of different dtypes, raise the same error everywhere."""
    if channel.world_size == 1:
        everyone = [mine]
    else:
        everyone = [_parse(entry, channel.world_size, rank) for rank, entry in enumerate(all_gather_objects(channel, mine.as_wire(), operation))]
    for rank, entry in enumerate(everyone):
        if entry.problem is not None:
            raise InvalidArgumentError(entry.problem if channel.world_size == 1 else f"rank {rank}: {entry.problem}")
    dtypes = {entry.dtype for entry in everyone if entry.dtype is not None}
    if len(dtypes) > 1:
        listing = "; ".join(f"rank {r}: {e.dtype}" for r, e in enumerate(everyone) if e.dtype is not None)
        raise InconsistentInputError(f"{operation}: ranks send different dtypes ({listing}); every rank must send one dtype")
    _check_incoming(channel, everyone, operation)
    return everyone


def _check_incoming(channel: Channel, everyone: list[Sending], operation: str) -> None:
    """Refuse, on every rank alike (each sees every rank's sizes), sizes that would make some rank
    allocate more than the codec's bound for what it receives."""
    limit = max_payload_bytes(channel.object_codec)
    for receiver in range(channel.world_size):
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


def _parse(entry: Any, world_size: int, rank: int) -> Sending:
    """A peer's :class:`Sending` from the wire, checked field by field."""
    try:
        dtype, shapes, problem, inline = entry
        if problem is not None:
            return Sending(problem=str(problem))
        if dtype is None and shapes is None:
            return Sending()
        if dtype == OBJECTS and shapes is None:
            return Sending(OBJECTS)
        if dtype not in _BY_NAME or len(shapes) != world_size:
            raise ValueError(f"dtype {dtype!r}, {len(shapes)} shapes")
        checked = tuple(tuple(_dimension(d) for d in shape) for shape in shapes if len(shape) <= MAX_DIMENSIONS)
        if len(checked) != world_size:
            raise ValueError("a shape with too many dimensions")
        if inline is not None:
            itemsize = torch.empty((), dtype=_BY_NAME[dtype]).element_size()
            if type(inline) is not bytes or len(inline) != sum(math.prod(shape) for shape in checked) * itemsize:
                raise ValueError("inline bytes that do not match the shapes")
        return Sending(dtype, checked, inline=inline)
    except (TypeError, ValueError) as error:
        raise WireFormatError(f"rank {rank} sent a malformed size header ({error})") from error


def _dimension(value: Any) -> int:
    if type(value) is not int or not 0 <= value < 2**62:
        raise ValueError(f"dimension {value!r}")
    return value


def exchange(channel: Channel, chunks: list[torch.Tensor] | None, everyone: list[Sending], operation: str) -> list[torch.Tensor] | None:
    """Move the chunks: rank ``j``'s ``chunks[i]`` arrives on rank ``i`` as entry ``j``. Returns
    what this rank received from each rank (entries of senders that sent nothing are absent:
    ``None`` when nobody sent)."""
    received: list[torch.Tensor] | None = start_exchange(channel, chunks, everyone, operation).wait()
    return received


def start_exchange(channel: Channel, chunks: list[torch.Tensor] | None, everyone: list[Sending], operation: str) -> Handle:
    """:func:`exchange`, started: the handle's ``wait()`` returns what it returns (at once when
    nobody sent or the data rode with the sizes; else when the backend's all-to-all is done)."""
    rank = channel.rank
    dtypes = [e.dtype for e in everyone if e.dtype is not None]
    if not dtypes:
        return CompletedHandle(None)
    dtype = _BY_NAME[dtypes[0]]
    itemsize = torch.empty((), dtype=dtype).element_size()
    incoming = [None if e.shapes is None else torch.Size(e.shapes[rank]) for e in everyone]
    if channel.world_size > 1 and all(e.inline is not None for e in everyone if e.shapes is not None):
        return CompletedHandle([_inline_part(e, rank, dtype, itemsize) for e in everyone if e.shapes is not None])
    out_sizes = [0 if shape is None else shape.numel() * itemsize for shape in incoming]
    device = channel.device if chunks is None or not channel.accepts(chunks[0].device) else chunks[0].device
    if chunks is None:
        flat = torch.empty(0, dtype=torch.uint8, device=device)
        in_sizes = [0] * channel.world_size
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

    return ThenHandle(channel.backend.all_to_all_async(output, flat, out_sizes, in_sizes), cut)


def _inline_part(entry: Sending, rank: int, dtype: torch.dtype, itemsize: int) -> torch.Tensor:
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
