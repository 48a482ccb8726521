"""Point-to-point messages: send, recv, their asynchronous forms, and a batched exchange for
rings and halos. They are methods of every :class:`~distcomm.Communicator` (this class is
one of its bases).

A receiver needs no shape or dtype: a small header travels first (see
:mod:`~distcomm.wire.point_to_point`). Tensors arrive as new tensors on the communicator's device;
anything else is pickled with the communicator's object codec. A peer that is this rank is
refused at every world size, so a world of one raises what a cluster raises.

Tested by tests/test_point_to_point.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from distcomm.backends.handles import Handle, JoinedHandle
from distcomm.collective_base import CollectiveBase
from distcomm.errors import InvalidArgumentError
from distcomm.instrument.hooks import collective
from distcomm.wire import point_to_point as pairwise


class PointToPoint(CollectiveBase):
    """send, recv, isend, irecv and batch_send_recv."""

    def _peer(self, value: Any, name: str, operation: str) -> int:
        peer = self._check_rank(value, name, operation)
        if peer == self.rank:
            raise InvalidArgumentError(f"{operation}: {name}={peer} is this rank; a message needs another rank")
        return peer

    @collective(every_rank=False)
    def send(self, data: Any, dst: int) -> None:
        """Send ``data`` (a tensor, or any picklable value) to rank ``dst``, which calls :meth:`recv`."""
        self._start_send(data, dst, "send").wait()

    @collective(None, every_rank=False)
    def recv(self, src: int) -> Any:
        """What rank ``src`` sent with :meth:`send`: a new tensor on :attr:`device`, or the value."""
        return self._start_recv(src, "recv").wait()

    @collective(every_rank=False)
    def isend(self, data: Any, dst: int) -> Handle:
        """Start sending ``data`` to ``dst``; the handle's ``wait()`` returns ``None`` once it left."""
        return self._start_send(data, dst, "isend")

    def _start_send(self, data: Any, dst: int, operation: str) -> Handle:
        dst = self._peer(dst, "dst", operation)
        first, rest, refusal = pairwise.encode(self._channel, data, operation)
        sends = [(first, dst)] + ([(rest, dst)] if rest.numel() else [])
        started = self._backend.start_pairs(sends, [])
        if refusal is not None:  # the receiver is told why, and raises it too
            started.wait()
            raise refusal
        return JoinedHandle([started])

    @collective(None, every_rank=False)
    def irecv(self, src: int) -> Handle:
        """Start receiving from ``src``; the handle's ``wait()`` returns what arrived. The header is
        received in the background; the payload, whose size it gives, when you wait. Several
        receives from one rank may be in flight, waited on in any order: each gets the next
        message from that rank, in the order the receives were started."""
        return self._start_recv(src, "irecv")

    def _start_recv(self, src: int, operation: str) -> Handle:
        return pairwise.Receive(self._channel, self._peer(src, "src", operation))

    @collective(None, every_rank=False)
    def batch_send_recv(self, sends: Mapping[int, Any], recv_from: Sequence[int] = ()) -> dict[int, Any]:
        """Send ``sends[dst]`` to each ``dst`` and receive from each rank of ``recv_from``, all at
        once (a ring step, a halo exchange: no order to get wrong); returns what arrived, by
        source. Each peer calls it (or :meth:`send`/:meth:`recv`) with its side."""
        if not isinstance(sends, Mapping):
            raise InvalidArgumentError("batch_send_recv takes sends as a dict {dst: data}")
        targets = {self._peer(dst, "a destination", "batch_send_recv"): data for dst, data in sends.items()}
        sources = [self._peer(src, "a source", "batch_send_recv") for src in recv_from]
        if len(set(sources)) != len(sources):
            raise InvalidArgumentError(f"batch_send_recv: recv_from names a rank twice: {list(recv_from)}")
        waiting = sorted(src for src in sources if src in self._channel.state.receiving)
        if waiting:
            raise InvalidArgumentError(
                f"batch_send_recv: an irecv from rank(s) {waiting} has not been waited on; wait on it first "
                "(messages from one rank are received in order)"
            )
        encoded = {dst: pairwise.encode(self._channel, data, "batch_send_recv") for dst, data in targets.items()}
        firsts = {src: pairwise.empty_first(self._channel) for src in sources}
        self._backend.start_pairs([(f, dst) for dst, (f, _, _) in encoded.items()], [(f, src) for src, f in firsts.items()]).wait()
        headers = {src: pairwise.read_header(self._channel, f, src) for src, f in firsts.items()}
        inline = {src: pairwise.inline_payload(firsts[src], header) for src, header in headers.items()}
        payloads = {src: pairwise.empty_payload(self._channel, headers[src]) if part is None else part for src, part in inline.items()}
        self._backend.start_pairs(
            [(rest, dst) for dst, (_, rest, _) in encoded.items() if rest.numel()],
            [(payloads[src], src) for src, part in inline.items() if part is None],
        ).wait()
        refusal = next((refusal for _, _, refusal in encoded.values() if refusal is not None), None)
        if refusal is not None:  # every message went, the refusals among them: the receivers raise them too
            raise refusal
        for src, part in inline.items():
            if part is None:
                pairwise.check_payload(payloads[src], headers[src], src)
        return {src: pairwise.decode(self._channel, headers[src], payloads[src], src) for src in sources}
