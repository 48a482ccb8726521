"""Safe object mode bounds what a payload may expand to; length fields are checked before allocating."""

from __future__ import annotations

import io
import pickle
import resource

import numpy as np
import pytest
import torch
from support.forged_slots import send_forged_opening

from distcomm import PickleCodec, RestrictedCodec, UnsafeObjectError
from distcomm.wire.call_check import body_room


class _Calls:
    """Pickles as a call of ``make(*args)``: what a hostile peer can put in a payload."""

    def __init__(self, make, *args):
        self.make, self.args = make, args

    def __reduce__(self):
        return self.make, self.args


class _PersistentPickler(pickle.Pickler):
    def __init__(self, buffer, pid):
        super().__init__(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        self.pid = pid

    def persistent_id(self, obj):
        return self.pid if obj == "payload" else None


def _with_persistent_id(pid) -> bytes:
    buffer = io.BytesIO()
    _PersistentPickler(buffer, pid).dump("payload")
    return buffer.getvalue()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


HOSTILE = {
    "bytearray(2**31)": pickle.dumps(_Calls(bytearray, 2**31)),
    "list(range(5e7))": pickle.dumps(_Calls(list, range(5 * 10**7))),
    "bytes(range(...))": pickle.dumps(_Calls(bytes, range(2**40))),
    "tensor id with an int as data": _with_persistent_id(("tensor", "torch.float32", (2**28,), 5)),
    "tensor id with a huge shape and no data": _with_persistent_id(("tensor", "torch.float32", (2**40,), b"")),
    "array id whose data is short": _with_persistent_id(("ndarray", "<f8", (2**27,), b"\0" * 8)),
    "malformed persistent id": _with_persistent_id("nonsense"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_small_hostile_payloads_do_not_expand(name: str) -> None:
    payload = HOSTILE[name]
    assert len(payload) < 200
    before = _peak_rss_mib()
    with pytest.raises(UnsafeObjectError, match="refusing"):
        RestrictedCodec().decode(payload)
    assert _peak_rss_mib() - before < 100


def test_limits_are_configurable_and_legitimate_data_passes() -> None:
    codec = RestrictedCodec(max_items=10, max_bytes=10_000)
    data = {"t": torch.arange(6.0).reshape(2, 3), "a": np.arange(4), "s": {1, 2}, "r": list(range(10))}
    decoded = codec.decode(codec.encode(data))
    assert torch.equal(decoded["t"], data["t"]) and decoded["a"].tolist() == [0, 1, 2, 3] and decoded["s"] == {1, 2}
    with pytest.raises(UnsafeObjectError, match="limit is 10"):
        codec.decode(pickle.dumps(_Calls(list, range(11))))
    with pytest.raises(UnsafeObjectError, match="limit is 10000"):
        codec.decode(codec.encode(b"x" * 20_000))
    with pytest.raises(ValueError, match="max_items must be a positive int"):
        RestrictedCodec(max_items=0)
    assert PickleCodec(max_bytes=5).max_bytes == 5


def send_a_lying_slot(comm, claimed: int, safe: bool):
    if safe:
        comm.object_codec = RestrictedCodec()
    if comm.rank == 1:  # a peer whose slot announces a payload it never sends
        body = claimed.to_bytes(8, "little") + bytes(body_room(2) - 8)  # a full head, then nothing more
        send_forged_opening(comm, "all_gather_object objects", body)
        return "sent"
    before = _peak_rss_mib()
    try:
        comm.all_gather_object("honest")
    except UnsafeObjectError as error:
        return str(error), _peak_rss_mib() - before
    return "accepted", _peak_rss_mib() - before


@pytest.mark.parametrize(("claimed", "safe"), [(2**29, True), (2**40, False)])
def test_an_announced_length_over_the_limit_is_refused_before_allocating(dist_world, claimed: int, safe: bool) -> None:
    (message, grown_mib), sent = dist_world(2).run(send_a_lying_slot, claimed, safe)
    assert sent == "sent"
    assert f"rank 1 announced a payload of {claimed} bytes" in message and "nothing was allocated" in message
    assert grown_mib < 100


def oversized_object(comm):
    comm.object_codec = RestrictedCodec(max_bytes=1000)
    return comm.broadcast_object(b"x" * 5000 if comm.rank == 0 else None, src=0)


def test_an_object_over_the_limit_fails_on_every_rank(dist_world) -> None:
    outcomes = dist_world(2).run_outcomes(oversized_object)
    assert all("over the codec's limit of 1000 bytes" in str(o.error) for o in outcomes), outcomes


# ------------------------------------------- every nested collective under safe mode


def nested_collectives(comm, safe: bool):
    """Every collective that carries nested data, with every container kind plain mode carries."""
    import collections

    if safe:
        comm.object_codec = RestrictedCodec()
    r = comm.rank
    data = {
        "ordered": collections.OrderedDict(t=torch.full((2,), float(r)), n=r),
        "counter": collections.Counter(a=r + 1, b=2),
        "default": collections.defaultdict(list, {"x": 1.0 * r}),
        "list": [torch.ones(1) * r, (r, 2.5)],
        "deque": collections.deque([r, "x"]),
    }
    reducible = {k: v for k, v in data.items() if k != "deque"}
    reduced = comm.all_reduce(reducible)
    metrics = comm.reduce_dict({"loss": torch.tensor(float(r)), "c": collections.Counter(n=r)}, "sum")
    gathered = comm.all_gather(data)
    objects = comm.all_gather_object(data)
    broadcast = comm.broadcast(collections.OrderedDict(w=torch.full((3,), float(r)), meta={"step": r}), src=1)
    items = [None]
    comm.broadcast_object_list(items, src=0) if r else comm.broadcast_object_list([data["counter"]], src=0)
    filled = [data["ordered"]] if r == 0 else [None]
    comm.broadcast_object_list(filled, src=0)
    mine = comm.scatter_object([collections.OrderedDict(i=i) for i in range(comm.world_size)] if r == 0 else None)

    def plain(value):  # types and values, comparable across modes and ranks
        if isinstance(value, torch.Tensor):
            return ("tensor", value.tolist())
        if isinstance(value, dict):
            extra = value.default_factory.__name__ if isinstance(value, collections.defaultdict) else None
            return (type(value).__name__, extra, {k: plain(v) for k, v in value.items()})
        if isinstance(value, (list, tuple, collections.deque)):
            return (type(value).__name__, [plain(v) for v in value])
        return (type(value).__name__, value)

    return plain([reduced, metrics, gathered, objects, broadcast, filled, mine])


@pytest.mark.parametrize("world_size", [2, 4])
def test_every_nested_collective_gives_the_same_under_safe_mode(dist_world, world_size: int) -> None:
    world = dist_world(world_size)
    safe, plain = world.run(nested_collectives, True), world.run(nested_collectives, False)
    assert safe == plain
    reduced, _, gathered, objects, broadcast, filled, mine = plain[0][1]
    n = world_size
    assert reduced[2]["counter"] == ("Counter", None, {"a": ("int", n * (n + 1) // 2), "b": ("int", 2 * n)})
    assert reduced[2]["default"] == ("defaultdict", "list", {"x": ("float", float(sum(range(n))))})
    assert reduced[2]["ordered"][0] == "OrderedDict" and broadcast[0] == "OrderedDict"
    assert broadcast[2]["w"] == ("tensor", [1.0, 1.0, 1.0])  # src=1's tensor, filled in place
    assert gathered[1][1][2]["counter"] == ("Counter", None, {"a": ("int", 2), "b": ("int", 2)})
    assert objects[1][0][2]["deque"] == ("deque", [("int", 0), ("str", "x")])
    assert filled[1][0][0] == "OrderedDict" and mine == ("OrderedDict", None, {"i": ("int", 0)})
