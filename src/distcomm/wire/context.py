"""The context: what the modules that give collectives their meaning need of a communicator.

A :class:`WireContext` is the backend a communicator runs on, with the few things every
step needs beside it: this rank and the world size, the device data that is not a
tensor travels on, the object codec (shared with the communicator and its views), and
where tensors can travel as they are. :mod:`~distcomm.wire.reduce`,
:mod:`~distcomm.wire.broadcast`, :mod:`~distcomm.wire.gather`, :mod:`~distcomm.wire.objects`,
:mod:`~distcomm.wire.layout_agreement` and :mod:`~distcomm.wire.call_check` take a context, never a
:class:`~distcomm.Communicator`: data goes down from the communicator and never climbs
back into it.
"""

from __future__ import annotations

from typing import Any

import torch

from distcomm.backends.backend import Backend
from distcomm.values.conversion import check_fillable, is_plain, readable
from distcomm.wire.codec import ObjectCodec, default_codec


class SharedState:
    """What a communicator and its views share: whether it is closed, its object codec, the
    point-to-point receives still in flight, and how many shrink generations it has used."""

    __slots__ = ("closed", "codec", "receiving", "generations")

    def __init__(self) -> None:
        self.closed = False
        self.codec: ObjectCodec | None = None
        self.generations = 0
        """Survivors' agreements this group has started (each under a key of its own in the store)."""
        self.receiving: dict[int, Any] = {}
        """The last receive started from each peer and not yet read whole (messages from one peer
        are read in the order their receives were started: see :class:`distcomm.wire.point_to_point.Receive`)."""


class WireContext:
    """One communicator's backend, codec and device rules, as the collectives' steps use them."""

    __slots__ = ("backend", "rank", "world_size", "state", "device_types", "bitwise", "check_words")

    def __init__(self, backend: Backend, state: SharedState) -> None:
        self.backend = backend
        self.rank, self.world_size = backend.rank, backend.world_size
        self.state = state
        self.device_types: dict[str, bool] = {}
        """Whether the backend takes tensors of each device type as they are (asked once per type)."""
        self.bitwise: bool | None = None
        """Whether the backend has a bitwise AND on the communicator's device: the call check's form
        (asked once: :func:`~distcomm.wire.call_check.ands_bits`)."""
        self.check_words: tuple[Any, torch.Tensor, dict[Any, torch.Tensor]] | None = None
        """The call check's two words, as a NumPy array, the tensor that shares its memory, and the
        second word seen as each (dtype, shape) a check carried (made on first use, reused by every
        call: :mod:`~distcomm.wire.call_check`)."""

    @property
    def device(self) -> torch.device:
        """Where data that is not a tensor travels."""
        return self.backend.device

    @property
    def object_codec(self) -> ObjectCodec:
        """How objects become bytes: the communicator's codec (made on first use)."""
        codec = self.state.codec
        if codec is None:
            codec = self.state.codec = default_codec()
        return codec

    def accepts(self, device: torch.device) -> bool:
        """Whether the backend takes tensors on ``device`` as they are."""
        known = self.device_types.get(device.type)
        if known is None:
            known = self.device_types[device.type] = self.backend.accepts(device)
        return known

    def transport(self, tensor: torch.Tensor, operation: str) -> torch.Tensor:
        """A tensor the backend fills in place of ``tensor``: ``tensor`` itself when the backend takes
        it as it is, else a plain contiguous copy on ``device`` (the caller copies the result back)."""
        if self.accepts(tensor.device) and is_plain(tensor):
            return tensor
        check_fillable(tensor, operation)
        return tensor.detach().resolve_conj().resolve_neg().to(self.device, memory_format=torch.contiguous_format, copy=True)

    def sendable(self, tensor: torch.Tensor, operation: str, where: str = "") -> torch.Tensor:
        """``tensor``'s values as the backend sends them (a tensor only read): :func:`readable`, on
        ``device`` when the backend does not take tensors where it is."""
        plain = readable(tensor, operation, where)
        return plain if self.accepts(plain.device) else plain.to(self.device)
