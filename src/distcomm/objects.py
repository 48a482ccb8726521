"""Object collectives: picklable objects between ranks, and the wire format they travel in.

An object travels as a fixed-size slot: an 8-byte little-endian length, then as much of
the payload as fits. Payloads that fit (most of them) take one collective; larger ones
take a second for the rest. A rank that cannot send its object (unpicklable, too large,
a bad argument) sends the reason instead, with the length negated, so every rank raises
the same error instead of some of them waiting forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distcomm.agreement import explain
from distcomm.conversion import describe
from distcomm.errors import InconsistentInputError, InvalidArgumentError
from distcomm.serialization import UnsafeObjectError, max_payload_bytes

if TYPE_CHECKING:
    from distcomm.communicator import Communicator

OBJECT_SLOT_BYTES = 4096
"""Object collectives send payloads up to this size (header included) in one collective."""
HEADER_BYTES = 8
SLOT_PAYLOAD_BYTES = OBJECT_SLOT_BYTES - HEADER_BYTES

DeviceLike = torch.device | str | None


def make_slot(payload: bytes, device: torch.device, *, refused: bool = False) -> torch.Tensor:
    """A fixed-size buffer: an 8-byte length, then as much of the payload as fits.

    A rank that cannot send its object sends the reason instead, with the length negated.
    """
    if refused:
        payload = payload[:SLOT_PAYLOAD_BYTES] or b"?"
    slot = np.zeros(OBJECT_SLOT_BYTES, dtype=np.uint8)
    slot[:HEADER_BYTES] = np.array([-len(payload) if refused else len(payload)], dtype="<i8").view(np.uint8)
    head = payload[:SLOT_PAYLOAD_BYTES]
    slot[HEADER_BYTES : HEADER_BYTES + len(head)] = np.frombuffer(head, dtype=np.uint8)
    return torch.from_numpy(slot).to(device)


def slot_length(slot: np.ndarray) -> int:
    """The length a slot announces (negative: a refusal)."""
    return int(slot[:HEADER_BYTES].view("<i8")[0])


def refusal_text(slot: np.ndarray, length: int) -> str:
    """The reason a rank sent in its slot instead of an object (``length`` is negative)."""
    size = min(-length, SLOT_PAYLOAD_BYTES)
    return bytes(slot[HEADER_BYTES : HEADER_BYTES + size]).decode(errors="replace")


def target_device(comm: Communicator, device: DeviceLike) -> torch.device:
    return comm.device if device is None else torch.device(device)


def encode(comm: Communicator, obj: Any, operation: str) -> tuple[bytes, InvalidArgumentError | None]:
    """``obj``'s bytes, or, when it cannot be sent, the message to send instead and the error."""
    try:
        payload = comm.object_codec.encode(obj)
    except Exception as error:
        refusal = InvalidArgumentError(f"{operation}: the object cannot be pickled: {error}")
        refusal.__cause__ = error
        return str(refusal).encode(), refusal
    limit = max_payload_bytes(comm.object_codec)
    if len(payload) > limit:
        too_large = InvalidArgumentError(
            f"{operation}: the object encodes to {len(payload)} bytes, over the codec's limit of {limit} "
            "bytes; raise it with the codec's max_bytes, or send the data as tensors"
        )
        return str(too_large).encode(), too_large
    return payload, None


def check_length(comm: Communicator, operation: str, rank: int, n: int) -> None:
    """Refuse a payload size announced by ``rank`` over the codec's limit, before allocating for it."""
    limit = max_payload_bytes(comm.object_codec)
    if n > limit:
        raise UnsafeObjectError(
            f"{operation}: rank {rank} announced a payload of {n} bytes, over the codec's limit of "
            f"{limit} bytes; nothing was allocated for it (raise the codec's max_bytes if it is genuine)"
        )


def exchange(comm: Communicator, obj: Any, operation: str, device: DeviceLike = None) -> list[bytes]:
    """Every rank's encoded ``obj``, in rank order (not yet decoded)."""
    payload, refusal = encode(comm, obj, operation)
    target = target_device(comm, device)
    backend = comm.tensor_backend
    slots = backend.all_gather(make_slot(payload, target, refused=refusal is not None)).cpu().numpy()
    lengths = [slot_length(slot) for slot in slots]
    if min(lengths) < 0:
        problems = [refusal_text(slot, n) if n < 0 else None for slot, n in zip(slots, lengths)]
        raise InconsistentInputError(explain(operation, [(p, ()) for p in problems])) from refusal
    for rank, n in enumerate(lengths):
        check_length(comm, operation, rank, n)
    if max(lengths) <= SLOT_PAYLOAD_BYTES:
        return [slot[HEADER_BYTES : HEADER_BYTES + n].tobytes() for slot, n in zip(slots, lengths)]
    padded = torch.zeros(max(lengths), dtype=torch.uint8)
    padded[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    full = backend.all_gather(padded.to(target)).cpu().numpy()
    return [row[:n].tobytes() for row, n in zip(full, lengths)]


def all_gather_objects(comm: Communicator, obj: Any, operation: str = "all_gather_object", device: DeviceLike = None) -> list[Any]:
    """Every rank's ``obj``, decoded, in rank order."""
    decode = comm.object_codec.decode
    return [decode(payload) for payload in exchange(comm, obj, operation, device)]


def _refused_by(comm: Communicator, src: int, message: str, operation: str) -> str:
    """The message every rank raises when ``src`` sent a refusal instead of its object."""
    return explain(operation, [(message if rank == src else None, ()) for rank in range(comm.world_size)])


def broadcast_object(
    comm: Communicator, obj: Any, src: int, operation: str, device: DeviceLike = None, problem: str | None = None
) -> Any:
    """``src``'s ``obj`` on every rank; ``src`` sends ``problem`` instead of ``obj`` when it has one."""
    target = target_device(comm, device)
    backend = comm.tensor_backend
    refusal: InvalidArgumentError | None = None
    payload = b""
    if comm.rank == src:
        if problem is not None:
            payload, refusal = problem.encode(), InvalidArgumentError(problem)
        else:
            payload, refusal = encode(comm, obj, operation)
    slot = make_slot(payload, target, refused=refusal is not None)
    backend.broadcast(slot, src)
    if comm.rank == src:
        if refusal is not None:
            raise InconsistentInputError(_refused_by(comm, src, payload.decode(), operation)) from refusal
        if len(payload) > SLOT_PAYLOAD_BYTES:
            rest = torch.frombuffer(bytearray(payload[SLOT_PAYLOAD_BYTES:]), dtype=torch.uint8)
            backend.broadcast(rest.to(target), src)
        return obj
    head = slot.cpu().numpy()
    length = slot_length(head)
    if length < 0:
        raise InconsistentInputError(_refused_by(comm, src, refusal_text(head, length), operation))
    check_length(comm, operation, src, length)
    data = head[HEADER_BYTES : HEADER_BYTES + length].tobytes()
    if length > len(data):
        rest = torch.empty(length - len(data), dtype=torch.uint8, device=target)
        backend.broadcast(rest, src)
        data += rest.cpu().numpy().tobytes()
    return comm.object_codec.decode(data)


def scatter_problem(comm: Communicator, objects: Any, src: int) -> str | None:
    """Why ``src``'s ``objects`` cannot be scattered (checked on ``src`` only), or ``None``."""
    if comm.rank != src:
        return None
    if isinstance(objects, (str, bytes)) or not isinstance(objects, Sequence):
        return f"src rank {src} must pass a sequence, got {describe(objects)}"
    if len(objects) != comm.world_size:
        return f"src rank {src} passed {len(objects)} objects for {comm.world_size} ranks; pass exactly one per rank"
    return None
