"""Object collectives: picklable objects between ranks, and the wire format they travel in.

A gathered object travels in the call's opening slot (:mod:`distcomm.wire.call_check`): an
8-byte little-endian length, then as much of the payload as fits; a larger one takes a
second collective for the rest. A broadcast object opens with the call check alone, then
travels from ``src`` in a fixed-size head of the same form (and the rest, if any). A rank
that cannot send its object (unpicklable, too large, a bad argument) sends the reason
instead (the length negated, or a refusal in the check), so every rank raises the same
error instead of some of them waiting forever.

Tested with the object collectives: tests/test_communicator.py, tests/wire/test_codec.py, tests/wire/test_forged_slots.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from distcomm.errors import InconsistentInputError, InvalidArgumentError, UnsafeObjectError, WireFormatError
from distcomm.values.conversion import describe, parse_device
from distcomm.wire.call_check import CallSlots, body_room, check_call, refuse, slot_bytes
from distcomm.wire.codec import max_payload_bytes
from distcomm.wire.mismatch import explain

if TYPE_CHECKING:
    from distcomm.wire.context import WireContext

OBJECT_SLOT_BYTES = slot_bytes(1)
"""Object collectives send payloads up to about this size in one collective (worlds of up to 16 ranks)."""
LENGTH_BYTES = 8

DeviceLike = torch.device | str | None


def target_device(context: WireContext, device: DeviceLike, operation: str = "an object collective") -> torch.device:
    """Where an object collective's bytes travel: ``device`` (checked), else the communicator's."""
    if device is None:
        return context.device
    target = parse_device(device, operation)
    if not context.accepts(target):
        raise InvalidArgumentError(f"{operation}: the {context.backend.name} backend cannot move data on {target}; pass device=None")
    return target


def _target_or_refuse(context: WireContext, device: DeviceLike, operation: str) -> torch.device:
    """:func:`target_device`, or its error raised on every rank (this rank refuses the call)."""
    try:
        return target_device(context, device, operation)
    except InvalidArgumentError as error:
        refuse(context, operation, str(error))


def encode(context: WireContext, obj: Any, operation: str) -> tuple[bytes, InvalidArgumentError | None]:
    """``obj``'s bytes, or, when it cannot be sent, the message to send instead and the error."""
    try:
        payload = context.object_codec.encode(obj)
    except Exception as error:
        refusal = InvalidArgumentError(f"{operation}: the object cannot be pickled: {error}")
        refusal.__cause__ = error
        return str(refusal).encode(), refusal
    limit = max_payload_bytes(context.object_codec)
    if len(payload) > limit:
        too_large = InvalidArgumentError(
            f"{operation}: the object encodes to {len(payload)} bytes, over the codec's limit of {limit} "
            "bytes; raise it with the codec's max_bytes, or send the data as tensors"
        )
        return str(too_large).encode(), too_large
    return payload, None


def slot_body(payload: bytes, room: int, *, refused: bool = False) -> bytes:
    """An object's opening body: its length, then as much as fits; for a refusal, the negated
    length of the reason, then the reason (cut to fit)."""
    head = payload[: room - LENGTH_BYTES]
    if refused:
        head = head or b"?"
    length = -len(head) if refused else len(payload)
    return length.to_bytes(LENGTH_BYTES, "little", signed=True) + head


def raise_refusals(operation: str, reasons: list[str | None], refusal: BaseException | None) -> NoReturn:
    """Raise, on every rank alike, the error that names each rank's reason for not taking part."""
    raise InconsistentInputError(explain(operation, [(reason, ()) for reason in reasons])) from refusal


def read_body(context: WireContext, slots: CallSlots, rank: int, operation: str) -> tuple[int, bytes]:
    """The length ``rank`` announced (negative: a refusal, whose text follows) and the bytes that came
    inline, checked: a refusal's text and an inline head must be exactly as long as announced,
    and a payload within the codec's limit, before anything is allocated for it."""
    words = slots.words(rank, 1)
    if words is None:
        raise WireFormatError(f"{operation}: rank {rank} sent an object slot with no length")
    length, head = int(words[0]), slots.body(rank)[LENGTH_BYTES:].tobytes()
    limit = max_payload_bytes(context.object_codec)
    if length > limit:
        raise UnsafeObjectError(
            f"{operation}: rank {rank} announced a payload of {length} bytes, over the codec's limit of "
            f"{limit} bytes; nothing was allocated for it (raise the codec's max_bytes if it is genuine)"
        )
    room = body_room(context.world_size) - LENGTH_BYTES
    if length < 0 and len(head) != -length or length >= 0 and len(head) != min(length, room):
        raise WireFormatError(f"{operation}: rank {rank} announced {length} bytes and sent {len(head)} in its slot")
    return length, head


def all_gather_payloads(context: WireContext, obj: Any, operation: str, device: DeviceLike = None, *, step: str = "objects") -> list[bytes]:
    """Every rank's encoded ``obj``, in rank order (not yet decoded)."""
    payload, refusal = encode(context, obj, operation)
    target = _target_or_refuse(context, device, operation)
    if context.world_size == 1:  # no other rank: the payload was still made, so what cannot travel fails here too
        if refusal is not None:
            raise_refusals(operation, [payload.decode(errors="replace")], refusal)
        return [payload]
    body = slot_body(payload, body_room(context.world_size), refused=refusal is not None)
    opened = check_call(context, operation, step, body, device=target)
    slots = [read_body(context, opened, rank, operation) for rank in range(context.world_size)]
    if any(length < 0 for length, _ in slots):
        raise_refusals(operation, [head.decode(errors="replace") if length < 0 else None for length, head in slots], refusal)
    if all(len(head) == length for length, head in slots):
        return [head for _, head in slots]
    longest = max(length for length, _ in slots)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    full = context.backend.all_gather(padded.to(target)).cpu().numpy()
    return [row[:length].tobytes() for row, (length, _) in zip(full, slots)]


def all_gather_objects(context: WireContext, obj: Any, operation: str = "all_gather_object", device: DeviceLike = None) -> list[Any]:
    """Every rank's ``obj``, decoded, in rank order."""
    decode = context.object_codec.decode
    return [decode(payload) for payload in all_gather_payloads(context, obj, operation, device)]


def broadcast_object(
    context: WireContext, obj: Any, src: int, operation: str, device: DeviceLike = None, problem: str | None = None
) -> Any:
    """``src``'s ``obj`` on every rank; ``src`` refuses the call with ``problem`` instead when it has one.

    Every rank opens with the call check alone (a body-less opening, so it holds in one step
    when every rank is in this call), then ``src`` broadcasts a fixed-size head (the payload's
    length and as much of it as fits) and, for a larger object, the rest in one more broadcast:
    two collectives for a small object, as torch takes. An object ``src`` cannot send is
    refused in the check, and every rank raises ``src``'s reason.
    """
    target = _target_or_refuse(context, device, operation)
    refusal: InvalidArgumentError | None = None
    payload = b""
    if context.rank == src:
        if problem is not None:
            payload, refusal = problem.encode(), InvalidArgumentError(problem)
        else:
            payload, refusal = encode(context, obj, operation)
    if context.world_size == 1:  # the only rank is the source: its object, once it has shown it can travel
        if refusal is not None:
            raise_refusals(operation, [payload.decode(errors="replace")], refusal)
        return obj
    if refusal is not None:
        refuse(context, operation, payload.decode(errors="replace"))
    opened = check_call(context, operation, f"object from {src}", device=target)
    if not opened.uniform:  # every rank's opening named this call, yet the checks differed: not a distcomm peer
        raise WireFormatError(f"{operation}: a rank's call check does not match its opening, which names this call")
    head = torch.zeros(OBJECT_SLOT_BYTES, dtype=torch.uint8)
    if context.rank == src:
        head[:LENGTH_BYTES] = torch.frombuffer(bytearray(len(payload).to_bytes(LENGTH_BYTES, "little")), dtype=torch.uint8)
        inline = payload[: OBJECT_SLOT_BYTES - LENGTH_BYTES]
        if inline:
            head[LENGTH_BYTES : LENGTH_BYTES + len(inline)] = torch.frombuffer(bytearray(inline), dtype=torch.uint8)
    head = head.to(target)
    context.backend.broadcast(head, src)
    host = head.cpu().numpy()
    length = int(host[:LENGTH_BYTES].view("<i8")[0])
    limit = max_payload_bytes(context.object_codec)
    if not 0 <= length <= limit:
        raise UnsafeObjectError(
            f"{operation}: rank {src} announced a payload of {length} bytes, outside 0..{limit} (the codec's "
            "limit); nothing was allocated for it (raise the codec's max_bytes if it is genuine)"
        )
    received = host[LENGTH_BYTES : LENGTH_BYTES + length].tobytes()
    if len(received) < length:
        rest = torch.empty(length - len(received), dtype=torch.uint8, device=target)
        if context.rank == src:
            rest.copy_(torch.frombuffer(bytearray(payload[len(received) :]), dtype=torch.uint8))
        context.backend.broadcast(rest, src)
        received += rest.cpu().numpy().tobytes()
    return obj if context.rank == src else context.object_codec.decode(received)


def scatter_problem(context: WireContext, objects: Any, src: int) -> str | None:
    """Why ``src``'s ``objects`` cannot be scattered (checked on ``src`` only), or ``None``."""
    if context.rank != src:
        return None
    if isinstance(objects, (str, bytes)) or not isinstance(objects, Sequence):
        return f"src rank {src} must pass a sequence, got {describe(objects)}"
    if len(objects) != context.world_size:
        return f"src rank {src} passed {len(objects)} objects for {context.world_size} ranks; pass exactly one per rank"
    return None


def gather_object(context: WireContext, obj: Any, dst: int, device: DeviceLike = None) -> list[Any] | None:
    """Every rank's ``obj`` as a list on ``dst``, ``None`` elsewhere (ranks with another ``dst`` are
    in another call)."""
    payloads = all_gather_payloads(context, obj, f"gather_object to {dst}", device)
    return [context.object_codec.decode(p) for p in payloads] if context.rank == dst else None


def broadcast_object_list(context: WireContext, object_list: list[Any], src: int, device: DeviceLike = None) -> None:
    """Fill ``object_list`` in place with ``src``'s items, on every rank."""
    received = broadcast_object(context, object_list, src, "broadcast_object_list", device)
    if received is not object_list:
        object_list[:] = received


def scatter_object(context: WireContext, objects: Any, src: int) -> Any:
    """Item ``i`` of ``src``'s sequence on rank ``i``; a ``src`` sequence of the wrong length raises on every rank."""
    problem = scatter_problem(context, objects, src)
    payload = list(objects or []) if problem is None else None
    return broadcast_object(context, payload, src, "scatter_object", problem=problem)[context.rank]
