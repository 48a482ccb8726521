"""send, recv, isend, irecv and batch_send_recv on real Gloo ranks: the receiver names no shape."""

from __future__ import annotations

import pytest
import torch

from distcomm import InvalidArgumentError, LocalCommunicator
from distcomm.errors import WireFormatError


def ping_pong(comm):
    if comm.rank == 0:
        comm.send(torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), dst=1)
        comm.send({"step": 3, "note": "hello"}, dst=1)
        comm.send(torch.empty(0, 4, dtype=torch.uint64), dst=1)
        reply = comm.recv(src=1)
        return reply.tolist()
    tensor = comm.recv(src=0)
    obj = comm.recv(0)
    empty = comm.recv(0)
    comm.send(tensor.float() * 2, dst=0)
    return tensor.dtype, tensor.shape, obj, empty.dtype, tuple(empty.shape)


def test_send_and_recv_carry_any_tensor_or_object_with_no_shape_given(dist_world) -> None:
    zero, one = dist_world(2).run(ping_pong)
    assert one == (torch.bfloat16, torch.Size([2, 3]), {"step": 3, "note": "hello"}, torch.uint64, (0, 4))
    assert zero == [[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]]


def ring(comm):
    r, n = comm.rank, comm.world_size
    right, left = (r + 1) % n, (r - 1) % n
    got = comm.batch_send_recv({right: torch.full((r + 1,), r)}, recv_from=[left])  # every rank sends first: no deadlock
    pending = comm.isend(f"from {r}", right)
    handle = comm.irecv(left)
    message = handle.wait()
    pending.wait()
    return got[left].tolist(), message


def test_a_ring_step_in_one_batch_and_with_async_handles(dist_world) -> None:
    results = dist_world(3).run(ring)
    for r, (got, message) in enumerate(results):
        left = (r - 1) % 3
        assert got == [left] * (left + 1) and message == f"from {left}"


def in_flight(comm):
    """Several receives from one rank in flight, waited on in reverse: each gets its own message."""
    if comm.rank == 0:
        sent = [torch.full((5000,), float(i)) for i in range(3)]  # each larger than the first message
        handles = [comm.isend(t, 1) for t in sent] + [comm.isend("small", 1)]
        comm.send(torch.arange(3), 1)
        for handle in handles:
            handle.wait()
        comm.send("last", 1)
        return None
    handles = [comm.irecv(0) for _ in range(4)]
    blocking = comm.recv(0)  # started after the four: the fifth message
    received = [h.wait() for h in reversed(handles)][::-1]
    pending = comm.irecv(0)
    try:
        comm.batch_send_recv({}, recv_from=[0])
        refused = None
    except InvalidArgumentError as error:
        refused = str(error)
    return [r if isinstance(r, str) else r.unique().tolist() for r in received], blocking.tolist(), refused, pending.wait()


def test_receives_in_flight_from_one_rank_each_get_their_own_message(dist_world) -> None:
    received, blocking, refused, last = dist_world(2).run(in_flight)[1]
    assert received == [[0.0], [1.0], [2.0], "small"] and blocking == [0, 1, 2] and last == "last"
    assert "irecv from rank(s) [0] has not been waited on" in refused


def forged_header(comm):
    if comm.rank == 0:
        comm._backend.start_pairs([(torch.full((4096,), 7, dtype=torch.uint8), 1)], []).wait()  # not a distcomm header
        return None
    try:
        comm.recv(0)
    except WireFormatError as error:
        return str(error)
    return "accepted"


def test_a_header_that_breaks_the_wire_format_is_refused(dist_world) -> None:
    assert "not a distcomm point-to-point header" in dist_world(2).run(forged_header)[1]


def test_a_peer_that_is_this_rank_is_refused_at_every_world_size() -> None:
    comm = LocalCommunicator()
    with pytest.raises(InvalidArgumentError, match="dst=0 is this rank"):
        comm.send(torch.ones(1), 0)
    with pytest.raises(InvalidArgumentError, match="src=0 is this rank"):
        comm.recv(0)
    with pytest.raises(InvalidArgumentError, match="src must be|src"):
        comm.irecv(3)
    assert comm.batch_send_recv({}, []) == {}


def forged_first_message(nbytes: int, sent_bytes: int, *, cut_first: bool = False) -> list[torch.Tensor]:
    """A first message as a peer that lies would make it: a tensor header announcing ``nbytes``
    bytes of float32, followed by only ``sent_bytes`` of them (or, with ``cut_first``, cut short itself)."""
    import numpy as np

    from distcomm.wire import point_to_point as pairwise

    first = np.zeros(pairwise.FIRST_BYTES, dtype=np.uint8)
    header = first[: pairwise.PAYLOAD_OFFSET].view("<i8")
    header[:4] = (pairwise.MAGIC, pairwise.TENSOR, nbytes, 0)
    header[4:7] = (1, 8, nbytes // 4)  # the tensor header: one dimension of float32 (dtype code 8)
    first[-8:].view("<i8")[0] = pairwise.END
    messages = [torch.from_numpy(first[: pairwise.FIRST_BYTES // 2] if cut_first else first)]
    if sent_bytes:
        messages.append(torch.full((sent_bytes,), 7, dtype=torch.uint8))
    return messages


def lying_peer(comm, case: str):
    if comm.rank == 0:
        messages = {
            "huge": forged_first_message(2**50, 0),
            "short payload": forged_first_message(8192, 4096),
            "short first": forged_first_message(16, 0, cut_first=True),
        }[case]
        comm._backend.start_pairs([(m, 1) for m in messages], []).wait()
        return None
    try:
        received = comm.recv(0)
    except WireFormatError as error:
        return str(error)
    return f"accepted {received.numel()} elements"


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("huge", "over the codec's limit"),
        ("short payload", "announced 8192 bytes and sent fewer"),
        ("short first", "shorter than the 4096 bytes"),
    ],
)
def test_nothing_a_lying_peer_announces_is_allocated_or_returned_as_data(dist_world, case: str, says: str) -> None:
    assert says in dist_world(2).run(lying_peer, case)[1]


def lazy_views(comm):
    base = torch.tensor([1 + 2j, 3 - 1j])
    views = [base.conj(), torch._neg_view(torch.tensor([1.0, -2.0])), torch.ones(1).expand(3), torch.arange(6.0).reshape(2, 3).t()]
    if comm.rank == 0:
        for view in views:
            comm.send(view, 1)
        comm.batch_send_recv({1: views[0]}, recv_from=[])
        return None
    received = [comm.recv(0) for _ in views] + [comm.batch_send_recv({}, recv_from=[0])[0]]
    return [(r.tolist(), v.tolist()) for r, v in zip(received, views + views[:1])]


def test_any_view_is_sent_as_the_values_it_shows(dist_world) -> None:
    for received, shown in dist_world(2).run(lazy_views)[1]:
        assert received == shown


def unsendable(comm, what: str):
    data = {"dtype": torch.ones(2, dtype=torch.float8_e4m3fn), "object": lambda: None}[what]
    if comm.rank == 0:
        try:
            comm.send(data, 1)
        except InvalidArgumentError as error:
            return str(error)
        return "sent"
    try:
        comm.recv(0)
    except InvalidArgumentError as error:
        return str(error)
    return "received"


@pytest.mark.parametrize(("what", "says"), [("dtype", "does not support dtype"), ("object", "cannot be pickled")])
def test_what_a_sender_cannot_send_raises_on_the_receiver_too(dist_world, what: str, says: str) -> None:
    sender, receiver = dist_world(2).run(unsendable, what)
    assert says in sender and receiver.startswith("rank 0 could not send its message: ") and says in receiver
