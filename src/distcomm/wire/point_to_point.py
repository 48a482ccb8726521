"""The wire of point-to-point messages: a first message of fixed size, then the rest of the payload.

A receiver never says what it expects: the first message's header says whether a tensor, a
pickled object or a refusal (the reason a sender could not send, which the receiver raises
too) follows, its dtype, shape and byte count. A payload that fits in the first message
(:data:`INLINE_BYTES`) rides in it, so a small message is one message. Nothing a peer sends
is trusted: every field is checked before anything is allocated for it (sizes against the
codec's bound), and a message cut short is seen (a first message ends with a known word, and
a larger payload's header states its last 8 bytes, which the receiver's buffer is set to
differ from); a violation is a :class:`~distcomm.errors.WireFormatError` on the receiver,
never data. Since a larger payload follows
its first message from the same peer, receives from one peer are read in the order they
were started (:class:`Receive`), however their handles are waited on.

Tested through send and recv: tests/wire/test_point_to_point.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from distcomm.backends.handles import Handle, JoinedHandle
from distcomm.errors import InvalidArgumentError, WireFormatError
from distcomm.values.conversion import readable
from distcomm.wire.codec import max_payload_bytes
from distcomm.wire.tensor_header import WORDS, header_words, read_tensor_header, unsupported

if TYPE_CHECKING:
    from distcomm.wire.context import WireContext

MAGIC = 0x64636F6D70327031  # "dcomp2p1" as a number
END = 0x646E6570327064  # the last word of every first message: a first message cut short lacks it
TENSOR, OBJECT, REFUSAL = 0, 1, 2
"""What a message carries: a tensor's bytes, a pickled object, or why the sender could not send."""
HEADER_WORDS = 4 + WORDS
"""magic, kind, byte count, the payload's last 8 bytes, then a tensor header (:mod:`~distcomm.wire.tensor_header`)."""
PAYLOAD_OFFSET = 16 * ((8 * HEADER_WORDS + 15) // 16)
"""Where an inline payload starts: after the header, aligned for every dtype (16 bytes)."""
FIRST_BYTES = 4096
"""The size of every first message: the header, as much of the payload as fits, and :data:`END`."""
INLINE_BYTES = FIRST_BYTES - PAYLOAD_OFFSET - 8


@attrs.frozen
class Header:
    """What a peer's first message says follows: a tensor (``dtype`` and ``shape``), an object, or a
    refusal, of ``nbytes`` bytes whose last 8 are ``tail`` (a payload that follows apart)."""

    kind: int
    dtype: torch.dtype | None
    shape: torch.Size
    nbytes: int
    tail: int


def encode(context: WireContext, data: Any, operation: str) -> tuple[torch.Tensor, torch.Tensor, InvalidArgumentError | None]:
    """The first message (header and, when it fits, the payload) and the rest of the payload (empty
    when it rode in the first): a tensor's bytes as they are, anything else pickled. Data that
    cannot be sent gives a refusal to send instead (the receiver raises its reason) and the error
    the sender raises once it is sent."""
    try:
        kind, tensor, payload = _payload(context, data, operation)
    except InvalidArgumentError as error:
        reason = str(error).encode("utf-8", errors="replace")[:INLINE_BYTES]
        kind, tensor, payload = REFUSAL, None, torch.frombuffer(bytearray(reason), dtype=torch.uint8)
        refusal: InvalidArgumentError | None = error
    else:
        refusal = None
    first = np.zeros(FIRST_BYTES, dtype=np.uint8)
    header = first[:PAYLOAD_OFFSET].view("<i8")
    fits = payload.numel() <= INLINE_BYTES
    tail = 0 if fits else int(payload[-8:].cpu().numpy().view("<i8")[0])
    header[:4] = (MAGIC, kind, payload.numel(), tail)
    header[4:HEADER_WORDS] = header_words(tensor)
    first[-8:].view("<i8")[0] = END
    if fits:
        first[PAYLOAD_OFFSET : PAYLOAD_OFFSET + payload.numel()] = payload.cpu().numpy()
    rest = payload[:0] if fits else payload.to(context.device)
    return torch.from_numpy(first).to(context.device), rest, refusal


def _payload(context: WireContext, data: Any, operation: str) -> tuple[int, torch.Tensor | None, torch.Tensor]:
    """``data`` as a kind, the tensor it is (``None`` for an object) and its bytes, or a clear error."""
    limit = max_payload_bytes(context.object_codec)
    if isinstance(data, torch.Tensor):
        problem = unsupported(data, operation)
        if problem is not None:
            raise InvalidArgumentError(problem)
        payload = readable(data, operation).reshape(-1).view(torch.uint8)
        if payload.numel() > limit:
            raise InvalidArgumentError(f"{operation}: a tensor of {payload.numel()} bytes, over the codec's limit of {limit}")
        return TENSOR, data, payload
    try:
        raw = context.object_codec.encode(data)
    except Exception as error:
        raise InvalidArgumentError(f"{operation}: the object cannot be pickled: {error}") from error
    if len(raw) > limit:
        raise InvalidArgumentError(f"{operation}: the object encodes to {len(raw)} bytes, over the codec's limit of {limit}")
    return OBJECT, None, torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)


def empty_first(context: WireContext) -> torch.Tensor:
    """Where a peer's first message lands (its last word cleared: a message cut short leaves it so)."""
    first = torch.empty(FIRST_BYTES, dtype=torch.uint8, device=context.device)
    first[-8:] = 0
    return first


def inline_payload(first: torch.Tensor, header: Header) -> torch.Tensor | None:
    """The payload when it rode in the first message, else ``None`` (it follows)."""
    return first[PAYLOAD_OFFSET : PAYLOAD_OFFSET + header.nbytes] if header.nbytes <= INLINE_BYTES else None


def read_header(context: WireContext, first: torch.Tensor, peer: int) -> Header:
    """What a peer's first message announces, every field checked before anything is allocated."""
    host = first.cpu().numpy()
    words = host[:PAYLOAD_OFFSET].view("<i8").tolist()
    magic, kind, nbytes, tail = words[:4]
    if magic != MAGIC or kind not in (TENSOR, OBJECT, REFUSAL) or nbytes < 0:
        raise WireFormatError(f"rank {peer} sent a message that is not a distcomm point-to-point header")
    if int(host[-8:].view("<i8")[0]) != END:
        raise WireFormatError(f"rank {peer} sent a first message shorter than the {FIRST_BYTES} bytes of one")
    limit = max_payload_bytes(context.object_codec)
    if nbytes > limit or kind == REFUSAL and nbytes > INLINE_BYTES:
        raise WireFormatError(
            f"rank {peer} announced a payload of {nbytes} bytes, over the codec's limit of {limit} bytes a peer "
            "may make this rank allocate; nothing was allocated for it"
        )
    if kind != TENSOR:
        return Header(kind, None, torch.Size(), nbytes, tail)
    announced = read_tensor_header(words[4:HEADER_WORDS], f"rank {peer}", limit)
    if announced is None or announced[2] != nbytes:
        raise WireFormatError(f"rank {peer} announced {nbytes} bytes and a tensor header of {announced}")
    dtype, size, _ = announced
    return Header(kind, dtype, size, nbytes, tail)


def empty_payload(context: WireContext, header: Header) -> torch.Tensor:
    """Where a payload that follows its first message lands. Its last 8 bytes are set to differ from
    the announced ones, so that a message cut short is seen (:func:`check_payload`)."""
    payload = torch.empty(header.nbytes, dtype=torch.uint8, device=context.device)
    payload[-8:] = torch.from_numpy(np.array([~header.tail], dtype="<i8").view(np.uint8))
    return payload


def check_payload(payload: torch.Tensor, header: Header, peer: int) -> None:
    """Refuse a payload that did not arrive whole (its last 8 bytes are not those announced)."""
    if int(payload[-8:].cpu().numpy().view("<i8")[0]) != header.tail:
        raise WireFormatError(f"rank {peer} announced {header.nbytes} bytes and sent fewer; nothing of it is returned")


def decode(context: WireContext, header: Header, payload: torch.Tensor, peer: int) -> Any:
    """The tensor or object that ``payload`` carries, as its header described it; a refusal's
    reason is raised."""
    if header.kind == REFUSAL:
        reason = payload.cpu().numpy().tobytes().decode("utf-8", errors="replace")
        raise InvalidArgumentError(f"rank {peer} could not send its message: {reason}")
    if header.kind == OBJECT:
        return context.object_codec.decode(payload.cpu().numpy().tobytes())
    assert header.dtype is not None
    return payload.view(header.dtype).reshape(header.shape)


def receive_rest(context: WireContext, first: torch.Tensor, peer: int) -> Any:
    """The message whose first message is ``first``: its payload read (from the first message, or
    received whole after it) and decoded."""
    header = read_header(context, first, peer)
    payload = inline_payload(first, header)
    if payload is None:
        payload = empty_payload(context, header)
        context.backend.start_pairs([], [(payload, peer)]).wait()
        check_payload(payload, header, peer)
    return decode(context, header, payload, peer)


class Receive(Handle):
    """One message from ``src``. Its first message is awaited only once the message before it
    from the same peer was read whole (that one's payload may still be on the way): so several
    receives from one peer may be in flight and waited on in any order, and each gets its own
    message, in the order the receives were started."""

    def __init__(self, context: WireContext, src: int) -> None:
        self._context, self._src = context, src
        self._prior: Receive | None = context.state.receiving.get(src)
        context.state.receiving[src] = self
        self._first: torch.Tensor | None = None
        self._header: Handle | None = None
        self._outcome: tuple[bool, Any] | None = None  # (received, the value or the error)
        if self._prior is None:
            self._post()

    def _post(self) -> None:
        self._first = empty_first(self._context)
        self._header = self._context.backend.start_pairs([], [(self._first, self._src)])

    def wait(self) -> Any:
        if self._outcome is None:
            try:
                if self._prior is not None:
                    self._prior.wait()  # a failure there leaves this peer's stream unreadable: raised here too
                    self._prior = None
                if self._header is None:
                    self._post()
                assert self._header is not None and self._first is not None
                self._header.wait()
                self._outcome = (True, self._read(self._first))
            except Exception as error:
                self._outcome = (False, error)
            finally:
                if self._context.state.receiving.get(self._src) is self:
                    del self._context.state.receiving[self._src]
        received, value = self._outcome
        if not received:
            raise value
        return value

    def is_completed(self) -> bool:
        if self._outcome is not None:
            return True
        prior_done = self._prior is None or self._prior.is_completed()
        return prior_done and self._header is not None and self._header.is_completed()

    def _read(self, first: torch.Tensor) -> Any:
        return receive_rest(self._context, first, self._src)


def start_send(context: WireContext, data: Any, dst: int, operation: str) -> Handle:
    """Start sending ``data`` to ``dst`` (a checked peer). Data that cannot be sent is refused to
    the receiver, which raises the reason, and then here."""
    first, rest, refusal = encode(context, data, operation)
    sends = [(first, dst)] + ([(rest, dst)] if rest.numel() else [])
    started = context.backend.start_pairs(sends, [])
    if refusal is not None:
        started.wait()
        raise refusal
    return JoinedHandle([started])


def batch_send_recv(context: WireContext, targets: dict[int, Any], sources: list[int]) -> dict[int, Any]:
    """Send ``targets[dst]`` to each ``dst`` and receive one message from each of ``sources`` (checked
    peers, each once), all at once; what arrived, by source."""
    waiting = sorted(src for src in sources if src in context.state.receiving)
    if waiting:
        raise InvalidArgumentError(
            f"batch_send_recv: an irecv from rank(s) {waiting} has not been waited on; wait on it first "
            "(messages from one rank are received in order)"
        )
    encoded = {dst: encode(context, data, "batch_send_recv") for dst, data in targets.items()}
    firsts = {src: empty_first(context) for src in sources}
    context.backend.start_pairs([(f, dst) for dst, (f, _, _) in encoded.items()], [(f, src) for src, f in firsts.items()]).wait()
    headers = {src: read_header(context, f, src) for src, f in firsts.items()}
    inline = {src: inline_payload(firsts[src], header) for src, header in headers.items()}
    payloads = {src: empty_payload(context, headers[src]) if part is None else part for src, part in inline.items()}
    context.backend.start_pairs(
        [(rest, dst) for dst, (_, rest, _) in encoded.items() if rest.numel()],
        [(payloads[src], src) for src, part in inline.items() if part is None],
    ).wait()
    refusal = next((refusal for _, _, refusal in encoded.values() if refusal is not None), None)
    if refusal is not None:  # every message went, the refusals among them: the receivers raise them too
        raise refusal
    for src, part in inline.items():
        if part is None:
            check_payload(payloads[src], headers[src], src)
    return {src: decode(context, headers[src], payloads[src], src) for src in sources}
