"""The wire format is parsed, not trusted: whatever a peer sends, the receiving rank raises a
distcomm error or returns correct data, and allocates nothing beyond the bounds.

A fuzz test feeds random and truncated slots of every layout (object slots, layout
agreements, tensor gather headers) to the parsers as a receiving rank reads them; then
real Gloo ranks send the forged slots the adversarial trials found.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from support.forged_slots import forge_next_opening, forged_check, forged_slot, send_forged_opening

from distcomm import InconsistentInputError, RestrictedCodec
from distcomm.errors import DistCommError, ObjectDecodeError, WireFormatError
from distcomm.wire.call_check import PREFIX_BYTES, CallSlots, body_room, read_prefixes, slot_bytes, tag_of
from distcomm.wire.codec import PickleCodec
from distcomm.wire.gather import _read_header
from distcomm.wire.layout_agreement import _read_headers
from distcomm.wire.objects import read_body
from distcomm.wire.tensor_header import WORDS as HEADER_WORDS

EXTREMES = [0, 1, -1, 2, 15, 16, 17, 63, 64, 4096, 2**31, 2**40, 2**50, 2**62, -(2**63), 2**63 - 1]


def received(world_size: int, tag: str, honest: bytes, forged: bytes, announced: int | None = None) -> CallSlots:
    """The opening an honest rank 0 reads when rank 1 forged its slot."""
    rows = torch.stack([forged_slot(world_size, tag, honest), forged_slot(world_size, tag, forged, announced=announced)])
    table = rows.numpy()
    operation, step = tag.split(" ", 1)
    return CallSlots(rows, table, read_prefixes(table, operation, step, slot_bytes(world_size)))


def random_body(rng: random.Random, room: int, words: int) -> tuple[bytes, int | None]:
    """Random words (extremes among them), random bytes, or a truncation; and what to announce."""
    choice = rng.randrange(4)
    if choice == 0:
        body = np.array([rng.choice(EXTREMES) for _ in range(words)], dtype="<i8").tobytes()
    elif choice == 1:
        body = rng.randbytes(rng.randrange(room))
    elif choice == 2:
        body = np.array([rng.choice(EXTREMES) for _ in range(words)], dtype="<i8").tobytes()[: rng.randrange(8 * words)]
    else:
        body = rng.randbytes(8 * words)
    announced = rng.choice([None, None, None, len(body) + rng.randrange(1, 64), rng.choice(EXTREMES)])
    return body, announced


def parse_every_layout(opening_for: Any, world_size: int, codec: Any) -> None:
    comm = SimpleNamespace(world_size=world_size, object_codec=codec)
    read_body(comm, opening_for("all_gather_object objects"), 1, "all_gather_object")
    _read_headers(opening_for("all_reduce layout"), "all_reduce", 5)
    _read_header(comm, opening_for("all_gather tensor"), 1)


@pytest.mark.parametrize("world_size", [2, 17])
@pytest.mark.parametrize("codec", [PickleCodec(), RestrictedCodec()], ids=["pickle", "safe"])
def test_random_and_truncated_slots_raise_distcomm_errors_or_parse(world_size: int, codec: Any) -> None:
    rng = random.Random(world_size)
    room = body_room(world_size)
    honest = {
        "all_gather_object objects": (5).to_bytes(8, "little") + b"hello",
        "all_reduce layout": np.array([0, 7, 1, 0, 0], dtype="<i8").tobytes(),
        "all_gather tensor": np.array([1, 8, 3] + [-1] * (HEADER_WORDS - 3), dtype="<i8").tobytes() + bytes(12),
    }
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(3000):
        body, announced = random_body(rng, room, HEADER_WORDS)

        def opening_for(tag: str) -> CallSlots:
            return received(world_size, tag, honest[tag], body, announced)

        for tag in honest:
            try:
                parse_every_layout(lambda wanted: opening_for(tag) if wanted == tag else opening_for(wanted), world_size, codec)
                outcomes["parsed"] += 1
            except DistCommError:
                outcomes["refused"] += 1
    assert outcomes["refused"] > 1000  # random bytes are refused, never a raw error


def test_what_a_slot_announces_is_bounded_before_anything_is_allocated() -> None:
    comm = SimpleNamespace(world_size=2, object_codec=RestrictedCodec())
    huge = np.array([2, 8, 2**25, 2**25] + [-1] * (HEADER_WORDS - 4), dtype="<i8").tobytes()
    with pytest.raises(WireFormatError, match=r"over the limit of 268435456 bytes"):
        _read_header(comm, received(2, "all_gather tensor", huge, huge), 1)
    negative = np.array([1, 8, -3] + [-1] * (HEADER_WORDS - 3), dtype="<i8").tobytes()
    with pytest.raises(WireFormatError, match=r"shape \[-3\]"):
        _read_header(comm, received(2, "all_gather tensor", negative, negative), 1)
    dims = np.array([40, 8] + [1] * (HEADER_WORDS - 2), dtype="<i8").tobytes()
    with pytest.raises(WireFormatError, match="with 40 dimensions"):
        _read_header(comm, received(2, "all_gather tensor", dims, dims), 1)
    good = np.array([0, 1, 1, 0, 0], dtype="<i8").tobytes()
    status = np.array([9, 1, 1, 0, 0], dtype="<i8").tobytes()
    with pytest.raises(WireFormatError, match="status 9"):
        _read_headers(received(2, "all_reduce layout", good, status), "all_reduce", 5)
    with pytest.raises(WireFormatError, match="shorter than the 40-byte agreement header"):
        _read_headers(received(2, "all_reduce layout", good, good[:12]), "all_reduce", 5)
    with pytest.raises(WireFormatError, match="announced 100 bytes and sent 3"):
        read_body(comm, received(2, "x objects", b"", (100).to_bytes(8, "little") + b"abc"), 1, "x")


# ------------------------------------------------------------- forged peers, real ranks


def forge_then_call(comm, layout: str, body: bytes, safe: bool) -> Any:
    """Rank 1 sends one forged opening slot; rank 0 makes the honest call the slot answers."""
    if safe:
        comm.object_codec = RestrictedCodec()
    if comm.rank == 1:
        if layout == "torch-bytes":  # what a raw torch.distributed peer sends: no distcomm header
            comm.tensor_backend.all_reduce_bitwise_and(forged_check())
            comm.tensor_backend.all_gather(torch.ones(slot_bytes(comm.world_size), dtype=torch.uint8))
        else:
            send_forged_opening(comm, layout, body)
        return "forged"
    calls = {
        "all_gather_object objects": lambda: comm.all_gather_object("honest"),
        "all_reduce layout": lambda: comm.all_reduce({"a": 1.0}),
        "all_gather tensor": lambda: comm.all_gather(torch.ones(2)),
        "broadcast_object object from 1": lambda: comm.broadcast_object(None, src=1),
        "torch-bytes": lambda: comm.all_gather_object("honest"),
    }
    try:
        return ("returned", calls[layout]())
    except DistCommError as error:
        return (type(error).__name__, str(error))


FORGED = {
    "agreement status 9": ("all_reduce layout", np.array([9, 1, 1, 0, 0], dtype="<i8").tobytes(), WireFormatError),
    "negative dimension": ("all_gather tensor", np.array([1, 8, -5] + [0] * 15, dtype="<i8").tobytes(), WireFormatError),
    "dimension 2**50": ("all_gather tensor", np.array([1, 8, 2**50] + [0] * 15, dtype="<i8").tobytes(), WireFormatError),
    "unknown dtype code": ("all_gather tensor", np.array([1, 99, 2] + [0] * 15, dtype="<i8").tobytes(), WireFormatError),
    "object over the limit": ("all_gather_object objects", (2**40).to_bytes(8, "little"), ObjectDecodeError),
    "object head too short": ("all_gather_object objects", (10).to_bytes(8, "little") + b"abc", WireFormatError),
    "broadcast refusal of 0 bytes": ("broadcast_object object from 1", (-5).to_bytes(8, "little", signed=True), WireFormatError),
    "garbage object": ("broadcast_object object from 1", (6).to_bytes(8, "little") + b"\x80\x05junk", ObjectDecodeError),
    "no header at all": ("torch-bytes", b"", WireFormatError),
}


@pytest.mark.parametrize("safe", [False, True], ids=["pickle", "safe"])
@pytest.mark.parametrize("case", list(FORGED))
def test_a_forged_peer_gets_the_honest_rank_a_distcomm_error(dist_world, case: str, safe: bool) -> None:
    layout, body, expected = FORGED[case]
    honest, forger = dist_world(2).run(forge_then_call, layout, body, safe)
    assert forger == "forged"
    kind = honest[0]
    assert kind != "returned" and issubclass(_error_class(kind), expected), (case, honest)


def _error_class(name: str) -> type:
    import distcomm.errors
    import distcomm.wire.codec

    return getattr(distcomm.errors, name, None) or getattr(distcomm.wire.codec, name)


def an_int_where_kinds_belong(comm) -> Any:
    """The layouts match but number kinds differ, so ranks trade kinds; rank 1 sends an int instead."""
    import distcomm.wire.reduce

    if comm.rank == 1:
        real = distcomm.wire.reduce.all_gather_objects
        distcomm.wire.reduce.all_gather_objects = lambda c, kinds, operation: real(c, 12345, operation)
        try:
            comm.all_reduce({"a": 1.0})
        except DistCommError:
            pass
        finally:
            distcomm.wire.reduce.all_gather_objects = real
        return "forged"
    try:
        return ("returned", comm.all_reduce({"a": 1}))
    except DistCommError as error:
        return (type(error).__name__, str(error))


def test_an_int_where_kinds_bytes_belong_is_a_wire_format_error(dist_world) -> None:
    honest, forger = dist_world(2).run(an_int_where_kinds_belong)
    assert forger == "forged" and honest[0] == "WireFormatError" and "rank 1 sent number kinds 12345" in honest[1]


def test_a_mismatch_is_named_not_mistaken_for_a_forgery() -> None:
    ours, theirs = tag_of("all_reduce", "layout"), tag_of("all_gather_object", "objects")
    assert ours != theirs and PREFIX_BYTES == 48
    with pytest.raises(InconsistentInputError, match="rank 1: all_gather_object objects"):
        read_prefixes(
            np.stack([forged_slot(2, "all_reduce layout", b"").numpy(), forged_slot(2, "all_gather_object objects", b"").numpy()]),
            "all_reduce", "layout", slot_bytes(2),
        )


# ----------------------------------------------------- random slots over real ranks

FUZZ_CALLS = {
    "all_gather_object objects": lambda c: c.all_gather_object({"rank": c.rank}),
    "all_reduce layout": lambda c: c.all_reduce({"a": 1.0, "b": 2}),
    "all_gather tensor": lambda c: c.all_gather(torch.arange(3.0)),
    "broadcast_object object from 1": lambda c: c.broadcast_object("from 1" if c.rank == 1 else None, src=1),
}


def fuzzed_call(comm, layout: str, seed: int, safe: bool) -> Any:
    """Rank 1's first all_gather sends random or truncated bytes behind a valid prefix, then rank 1
    goes on with the call as written, so both ranks read the same table and take the same path."""
    if safe:
        comm.object_codec = RestrictedCodec()
    backend = comm.tensor_backend
    if comm.rank == 1:  # only the opening is forged
        body, announced = random_body(random.Random(seed), body_room(comm.world_size), HEADER_WORDS)
        forge_next_opening(comm, forged_slot(comm.world_size, layout, body, announced=announced))
    try:
        result = FUZZ_CALLS[layout](comm)
        return ("returned", repr(result)[:200])
    except DistCommError as error:
        return (type(error).__name__, str(error)[:200])
    except Exception as error:  # noqa: BLE001 (what the test must never see on the honest rank)
        return ("RAW " + type(error).__name__, str(error)[:200])
    finally:
        backend.__dict__.pop("all_gather", None)
        backend.__dict__.pop("all_reduce_bitwise_and", None)


@pytest.mark.parametrize("safe", [False, True], ids=["pickle", "safe"])
def test_random_slots_from_a_real_peer_never_give_the_honest_rank_a_raw_error(dist_world, safe: bool) -> None:
    seen: dict[str, int] = {}
    for layout in FUZZ_CALLS:
        for seed in range(25):
            honest, _ = dist_world(2).run(fuzzed_call, layout, seed, safe)
            kind = honest[0]
            seen[kind] = seen.get(kind, 0) + 1
            assert not kind.startswith("RAW"), (layout, seed, honest)
            if kind == "returned" and layout != "broadcast_object object from 1":
                assert "'rank': 0" in honest[1] or "1.0" in honest[1] or "tensor" in honest[1], (layout, seed, honest)
    assert seen.get("WireFormatError", 0) > 20, seen


def lying_source_of_a_broadcast(comm, length: int, body: bytes) -> Any:
    """Rank 1, the source, makes the call's check as an honest rank would, then broadcasts a head
    that announces ``length`` bytes and carries ``body``."""
    from distcomm.wire.call_check import check_call
    from distcomm.wire.objects import OBJECT_SLOT_BYTES

    if comm.rank == 1:
        check_call(comm._context, "broadcast_object", "object from 1")
        head = np.zeros(OBJECT_SLOT_BYTES, dtype=np.uint8)
        head[:8] = np.array([length], dtype="<i8").view(np.uint8)
        head[8 : 8 + len(body)] = np.frombuffer(body, dtype=np.uint8)
        comm.tensor_backend.broadcast(torch.from_numpy(head), 1)
        return "forged"
    try:
        return ("returned", comm.broadcast_object(None, src=1))
    except DistCommError as error:
        return (type(error).__name__, str(error))


@pytest.mark.parametrize(
    ("length", "body", "expected", "words"),
    [(2**40, b"", "UnsafeObjectError", "announced a payload of 1099511627776 bytes"),
     (-7, b"", "UnsafeObjectError", "announced a payload of -7 bytes"),
     (6, b"\x80\x05junk", "ObjectDecodeError", "")],
)  # fmt: skip
def test_a_broadcast_source_that_lies_in_its_head_gets_the_others_a_distcomm_error(dist_world, length, body, expected, words) -> None:
    honest, forger = dist_world(2).run(lying_source_of_a_broadcast, length, body)
    assert forger == "forged"
    assert issubclass(_error_class(honest[0]), _error_class(expected)) and words in honest[1], honest


def forged_barrier(comm) -> Any:
    """Rank 1 names the barrier in its slot, but its check matches nobody's."""
    if comm.rank == 1:
        comm.tensor_backend.all_reduce_bitwise_and(forged_check())
        comm.tensor_backend.all_gather(forged_slot(comm.world_size, "barrier", b""))
        return "forged"
    try:
        comm.barrier()
        return "returned"
    except DistCommError as error:
        return (type(error).__name__, str(error))


def test_a_barrier_whose_peer_forged_its_check_is_a_wire_format_error(dist_world) -> None:
    honest, forger = dist_world(2).run(forged_barrier)
    assert forger == "forged" and honest[0] == "WireFormatError" and "does not match its opening" in honest[1]
