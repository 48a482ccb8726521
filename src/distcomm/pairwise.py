"""The wire of point-to-point messages: a first message of fixed size, then the rest of the payload.

A receiver never says what it expects: the first message's header says whether a tensor or a
pickled object follows, its dtype, shape and byte count. A payload that fits in the first
message (:data:`INLINE_BYTES`) rides in it, so a small message is one message. Every field
is checked before anything is allocated for it; a header that breaks the format is a
:class:`~distcomm.errors.WireFormatError` on the receiver. Since a larger payload follows
its first message from the same peer, receives from one peer are read in the order they
were started (:class:`Receive`), however their handles are waited on.

Tested through send and recv: tests/test_point_to_point.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distcomm.conversion import check_transportable
from distcomm.dtypes import DTYPE_CODES, DTYPES
from distcomm.errors import InvalidArgumentError, WireFormatError
from distcomm.handles import Handle

if TYPE_CHECKING:
    from distcomm.channel import Channel

MAGIC = 0x64636F6D70327031  # "dcomp2p1" as a number
TENSOR, OBJECT = 0, 1
MAX_DIMENSIONS = 16
HEADER_WORDS = 5 + MAX_DIMENSIONS
"""magic, kind, dtype code, number of dimensions, byte count, then the dimensions."""
PAYLOAD_OFFSET = 16 * ((8 * HEADER_WORDS + 15) // 16)
"""Where an inline payload starts: after the header, aligned for every dtype (16 bytes)."""
FIRST_BYTES = 4096
"""The size of every first message: the header, then as much of the payload as fits."""
INLINE_BYTES = FIRST_BYTES - PAYLOAD_OFFSET


def encode(channel: Channel, data: Any, operation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first message (header and, when it fits, the payload) and the rest of the payload (empty
    when it rode in the first): a tensor's bytes as they are, anything else pickled."""
    first = np.zeros(FIRST_BYTES, dtype=np.uint8)
    header = first[:PAYLOAD_OFFSET].view("<i8")
    if isinstance(data, torch.Tensor):
        check_transportable(data, operation)
        if data.dim() > MAX_DIMENSIONS:
            raise InvalidArgumentError(f"{operation}: a tensor of {data.dim()} dimensions; at most {MAX_DIMENSIONS}")
        if data.dtype not in DTYPE_CODES:
            raise InvalidArgumentError(f"{operation} does not support dtype {data.dtype}; convert the tensor first")
        payload = data.detach().contiguous().reshape(-1).view(torch.uint8)
        header[:5] = (MAGIC, TENSOR, DTYPE_CODES[data.dtype], data.dim(), payload.numel())
        header[5 : 5 + data.dim()] = data.shape
    else:
        raw = channel.object_codec.encode(data)
        payload = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        header[:5] = (MAGIC, OBJECT, 0, 0, len(raw))
    fits = payload.numel() <= INLINE_BYTES
    if fits:
        first[PAYLOAD_OFFSET : PAYLOAD_OFFSET + payload.numel()] = payload.cpu().numpy()
    rest = payload[:0] if fits else payload.to(channel.device)
    return torch.from_numpy(first).to(channel.device), rest


def empty_first(channel: Channel) -> torch.Tensor:
    """Where a peer's first message lands."""
    return torch.empty(FIRST_BYTES, dtype=torch.uint8, device=channel.device)


def inline_payload(first: torch.Tensor, nbytes: int) -> torch.Tensor | None:
    """The payload when it rode in the first message, else ``None`` (it follows)."""
    return first[PAYLOAD_OFFSET : PAYLOAD_OFFSET + nbytes] if nbytes <= INLINE_BYTES else None


def read_header(channel: Channel, first: torch.Tensor, peer: int) -> tuple[int, torch.dtype | None, torch.Size, int]:
    """``(kind, dtype, shape, byte count)`` from a peer's first message, every field checked."""
    words = first[:PAYLOAD_OFFSET].cpu().numpy().view("<i8").tolist()
    magic, kind, code, dims, nbytes = words[:5]
    if magic != MAGIC or kind not in (TENSOR, OBJECT) or not 0 <= dims <= MAX_DIMENSIONS or nbytes < 0:
        raise WireFormatError(f"rank {peer} sent a message that is not a distcomm point-to-point header")
    if kind == OBJECT:
        limit = getattr(channel.object_codec, "max_bytes", None)
        if limit is not None and nbytes > limit:
            raise WireFormatError(f"rank {peer} announced an object of {nbytes} bytes, over the codec's limit of {limit}")
        return kind, None, torch.Size(), nbytes
    shape = words[5 : 5 + dims]
    if not 0 <= code < len(DTYPES) or any(d < 0 for d in shape):
        raise WireFormatError(f"rank {peer} sent a tensor header with dtype code {code} and shape {shape}")
    dtype = DTYPES[code]
    size = torch.Size(shape)
    if size.numel() * torch.empty((), dtype=dtype).element_size() != nbytes:
        raise WireFormatError(f"rank {peer} announced {nbytes} bytes for a {dtype} tensor of shape {shape}")
    return kind, dtype, size, nbytes


def decode(channel: Channel, kind: int, dtype: torch.dtype | None, shape: torch.Size, payload: torch.Tensor) -> Any:
    """The tensor or object that ``payload`` carries, as its header described it."""
    if kind == OBJECT:
        return channel.object_codec.decode(payload.cpu().numpy().tobytes())
    assert dtype is not None
    return payload.view(dtype).reshape(shape)


class Receive(Handle):
    """One message from ``src``. Its first message is awaited only once the message before it
    from the same peer was read whole (that one's payload may still be on the way): so several
    receives from one peer may be in flight and waited on in any order, and each gets its own
    message, in the order the receives were started."""

    def __init__(self, channel: Channel, src: int) -> None:
        self._channel, self._src = channel, src
        self._prior: Receive | None = channel.state.receiving.get(src)
        channel.state.receiving[src] = self
        self._first: torch.Tensor | None = None
        self._header: Handle | None = None
        self._outcome: tuple[bool, Any] | None = None  # (received, the value or the error)
        if self._prior is None:
            self._post()

    def _post(self) -> None:
        self._first = empty_first(self._channel)
        self._header = self._channel.backend.start_pairs([], [(self._first, self._src)])

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
                if self._channel.state.receiving.get(self._src) is self:
                    del self._channel.state.receiving[self._src]
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
        kind, dtype, shape, nbytes = read_header(self._channel, first, self._src)
        payload = inline_payload(first, nbytes)
        if payload is None:
            payload = torch.empty(nbytes, dtype=torch.uint8, device=self._channel.device)
            self._channel.backend.start_pairs([], [(payload, self._src)]).wait()
        return decode(self._channel, kind, dtype, shape, payload)
