"""Collectives beyond the basics, over 2 to 4 real Gloo ranks and on LocalCommunicator:
reduce ops, reduce_dict, scatter_object, safe object mode, split, async gathers, helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from support.transports import BackendCommunicator

import distcomm
from distcomm import (
    CollectiveError,
    InvalidArgumentError,
    LocalCommunicator,
    RestrictedCodec,
    UnsafeObjectError,
    distutils,
    register_safe_class,
)
from distcomm.backends.torch_dist import TorchDistBackend
from distcomm.testing import World


class CountingBackend(TorchDistBackend):
    """Counts the reductions that reach the process group."""

    reductions = 0

    def all_reduce(self, tensor, op):
        self.reductions += 1
        super().all_reduce(tensor, op)

    def all_reduce_bitwise_and(self, tensor):  # the call check, on Gloo
        self.reductions += 1
        super().all_reduce_bitwise_and(tensor)


# ----------------------------------------------------------------- reduce ops


def reduce_ops(comm):
    r, n = comm.rank, comm.world_size
    values = torch.tensor([r + 1.0, -r])
    return {
        op: comm.all_reduce(values.clone(), op).tolist()
        for op in ("sum", "MEAN", "Min", "max", "product", dist.ReduceOp.PRODUCT, distcomm.ReduceOp.MAX)
    } | {"int product": comm.all_reduce(r + 1, "product"), "n": n}


def test_reduce_ops_in_any_spelling(dist_world) -> None:
    for result in dist_world(3).run(reduce_ops):
        assert result["sum"] == [6.0, -3.0] and result["MEAN"] == [2.0, -1.0]
        assert result["Min"] == [1.0, -2.0] and result["max"] == [3.0, 0.0]
        assert result["product"] == [6.0, 0.0] == result[dist.ReduceOp.PRODUCT]
        assert result[distcomm.ReduceOp.MAX] == [3.0, 0.0] and result["int product"] == 6


# ---------------------------------------------------------------- reduce_dict


def metrics_in_one_collective_per_dtype(comm):
    backend = CountingBackend()
    counting = BackendCommunicator(backend)
    r = comm.rank
    loss = torch.tensor(float(r + 1), requires_grad=True) * 2  # attached to the graph
    metrics = {f"m{i}": float(i + r) for i in range(50)}
    metrics |= {"loss": loss, "nested": {"correct": r + 1, "seen": [10, 20]}}
    reduced = counting.reduce_dict(metrics, op="sum")
    untouched = loss.item() == 2.0 * (r + 1) and loss.requires_grad
    return backend.reductions, reduced["m0"], reduced["loss"].item(), reduced["loss"].requires_grad, reduced["nested"], untouched


def test_reduce_dict_takes_one_collective_per_dtype_and_leaves_inputs_alone(dist_world) -> None:
    for result in dist_world(2).run(metrics_in_one_collective_per_dtype):
        # the call check, then float64 (the fifty floats), float32 (the loss tensor), int64 (the counts)
        assert result == (4, 1.0, 6.0, False, {"correct": 3, "seen": [20, 40]}, True)


def test_reduce_dict_needs_a_dict(local_comm) -> None:
    with pytest.raises(InvalidArgumentError, match="reduce_dict takes a dict of metrics, got list"):
        local_comm.reduce_dict([1.0])
    assert local_comm.reduce_dict({"a": {"b": 1}}, "mean") == {"a": {"b": 1.0}}


# ------------------------------------------------------------ scatter_object


def scatter(comm, length):
    items = [{"shard": i} for i in range(length)] if comm.rank == 1 else None
    return comm.scatter_object(items, src=1)


def test_scatter_object_gives_each_rank_its_item(dist_world) -> None:
    assert dist_world(3).run(scatter, 3) == [{"shard": 0}, {"shard": 1}, {"shard": 2}]


def test_scatter_object_of_the_wrong_length_fails_on_every_rank(dist_world) -> None:
    outcomes = dist_world(3).run_outcomes(scatter, 2)
    assert all(isinstance(o.error, InvalidArgumentError) for o in outcomes)
    assert "src rank 1 passed 2 objects for 3 ranks" in str(outcomes[0].error)


# ---------------------------------------------------------------- safe objects


class Exploit:
    """Unpickling this runs a shell command (the classic malicious payload)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@register_safe_class
class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def test_restricted_codec_refuses_a_malicious_payload(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeObjectError, match="refusing to unpickle posix.system"):
        RestrictedCodec().decode(pickle.dumps(Exploit(str(marker))))
    comm = LocalCommunicator()
    comm.object_codec = RestrictedCodec()
    with pytest.raises(UnsafeObjectError):
        comm.all_gather_object(Exploit(str(marker)))
    assert not marker.exists()
    with pytest.raises(UnsafeObjectError, match="not a valid restricted pickle"):
        RestrictedCodec().decode(b"garbage")


def safe_exchange(comm, marker):
    comm.object_codec = RestrictedCodec()
    payload = {
        "tensor": torch.arange(4, dtype=torch.bfloat16).reshape(2, 2) + comm.rank,
        "empty": torch.empty(0, 3),
        "array": np.arange(3) * comm.rank,
        "point": Point(comm.rank, 1),
        "builtins": (1, 2.5, "s", b"b", {1, 2}, frozenset({3}), None, range(2)),
    }
    gathered = comm.all_gather_object(payload)
    try:
        comm.all_gather_object(Exploit(marker) if comm.rank == 1 else "harmless")
    except UnsafeObjectError as error:
        refused = str(error)
    return [(g["tensor"].dtype, g["tensor"].tolist(), g["empty"].shape, g["array"].tolist(), g["point"], g["builtins"])
            for g in gathered], refused  # fmt: skip


def test_safe_mode_across_ranks(dist_world, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for gathered, refused in dist_world(2).run(safe_exchange, str(marker)):
        assert "refusing to unpickle posix.system" in refused
        assert gathered[1][0] == torch.bfloat16 and gathered[1][1] == [[1.0, 2.0], [3.0, 4.0]]
        assert gathered[1][2] == torch.Size([0, 3]) and gathered[1][3] == [0, 1, 2] and gathered[1][4] == Point(1, 1)
        assert gathered[0][5] == (1, 2.5, "s", b"b", {1, 2}, frozenset({3}), None, range(2))
    assert not marker.exists()


def test_safe_mode_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("DISTCOMM_SAFE_OBJECTS", "1")
    assert isinstance(LocalCommunicator().object_codec, RestrictedCodec)
    with pytest.raises(InvalidArgumentError, match="needs encode"):
        LocalCommunicator().object_codec = object()  # type: ignore[assignment]


# ----------------------------------------------------------------------- split


def split_and_use(comm):
    sub = comm.split([3, 1])
    if sub is None:
        return None
    facade_sum = distutils.all_reduce(comm.rank, group=sub.group)
    inner = sub.split([1])  # nested: called by the members of sub only
    return sub.rank, sub.world_size, sub.all_reduce(comm.rank), sub.all_gather_object(comm.rank), facade_sum, (
        inner.rank if inner else None
    )


def test_split_renumbers_members_and_gives_others_none(dist_world) -> None:
    assert dist_world(4).run(split_and_use) == [None, (0, 2, 4, [1, 3], 4, None), None, (1, 2, 4, [1, 3], 4, 0)]


def bad_split(comm, ranks):
    return comm.split(ranks)


@pytest.mark.parametrize(("ranks", "message"), [([0, 0], "twice"), ([2], "outside the group"), ([], "at least one"), ("01", "sequence")])
def test_bad_splits_fail_on_every_rank(dist_world, ranks, message) -> None:
    outcomes = dist_world(2).run_outcomes(bad_split, ranks)
    assert all(isinstance(o.error, InvalidArgumentError) and message in str(o.error) for o in outcomes)


def test_local_split() -> None:
    assert isinstance(LocalCommunicator().split([0]), LocalCommunicator)


def split_timeouts(comm):
    sub = comm.split([0, 1])
    own = comm.split([0, 1], timeout=1.5)
    nested = sub.split([0, 1]) if sub is not None else None
    mesh = sub.mesh({"a": 2}) if sub is not None else None  # over a subgroup: made by splitting
    timeouts = [None if c is None else c.timeout.total_seconds() for c in (comm, sub, own, nested, mesh and mesh["a"])]
    failure = None
    if comm.rank == 0:  # rank 1 never joins: the split's collective fails by the split's own timeout
        try:
            own.all_reduce(torch.ones(1))
        except CollectiveError as error:
            failure = str(error)
    return timeouts, failure


@pytest.mark.integration  # a world of its own
def test_a_split_inherits_its_parents_timeout_unless_given_one() -> None:
    with World(3, timeout=3.0, call_timeout=30) as world:
        (timeouts, failure), (others, _), (outside, _) = world.run(split_timeouts)
    assert timeouts == others == [3.0, 3.0, 1.5, 3.0, 3.0] and outside == [3.0, None, None, None, None]
    assert failure is not None and "1500ms" in failure  # its own 1.5 s, never torch's default 30 minutes


def lazy_lone_tensors(comm):
    def views():
        return {
            "neg": (torch._neg_view(torch.tensor([1.0, -2.0])), [-1.0, 2.0]),
            "conj": (torch.tensor([1 + 2j, 3j]).conj(), [1 - 2j, -3j]),
        }

    comm.all_reduce(torch.zeros(2))  # plain tensors of both dtypes first: the hot path knows the dtypes,
    comm.all_reduce(torch.zeros(2, dtype=torch.complex64))  # so only its tests of the view's bits can keep it off
    results = {}
    for name in ("neg", "conj"):
        reduced = views()[name][0] if comm.rank == 0 else torch.tensor(views()[name][1])
        comm.all_reduce(reduced)
        started = views()[name][0] if comm.rank == 0 else torch.tensor(views()[name][1])
        comm.all_reduce_async(started).wait()
        filled = views()[name][0] if comm.rank == 1 else torch.tensor(views()[name][1]) * 5
        comm.broadcast(filled, src=0)
        async_filled = views()[name][0] if comm.rank == 1 else torch.tensor(views()[name][1]) * 5
        comm.broadcast_async(async_filled, src=0).wait()
        results[name] = [t.tolist() for t in (reduced, started, filled, async_filled)], views()[name][1]
    return results


def test_a_lazily_negated_or_conjugated_tensor_is_reduced_and_filled_as_the_values_it_shows(dist_world) -> None:
    for result in dist_world(2).run(lazy_lone_tensors):
        for (reduced, started, filled, async_filled), shown in result.values():
            doubled, fivefold = [2 * v for v in shown], [5 * v for v in shown]
            assert reduced == started == doubled and filled == async_filled == fivefold


def gather_what_requires_grad_on_one_rank(comm):
    x = torch.full((3,), float(comm.rank), requires_grad=comm.rank == 1)
    gathered = comm.all_gather(x * 1, same_shape=True)
    started = comm.all_gather_async(x * 1, same_shape=True).wait()
    return [t.tolist() for t in gathered], [t.requires_grad for t in gathered + started]


def test_a_gather_of_a_tensor_that_requires_grad_on_one_rank_gathers_detached_values(dist_world) -> None:
    for values, requires_grad in dist_world(2).run(gather_what_requires_grad_on_one_rank):
        assert values == [[0.0] * 3, [1.0] * 3] and not any(requires_grad)
    local = LocalCommunicator().all_gather(torch.ones(2, requires_grad=True), same_shape=True)
    assert not local[0].requires_grad  # the same kind at every world size


# ------------------------------------------------------------------------ async


def gather_async(comm):
    even = comm.all_gather_async(torch.full((2,), float(comm.rank)))
    uneven = comm.all_gather_async(torch.ones(comm.rank + 1, dtype=torch.int16))
    return [t.tolist() for t in even.wait()], [t.shape[0] for t in uneven.wait()]


def test_all_gather_async(dist_world) -> None:
    assert dist_world(3).run(gather_async) == [([[0.0] * 2, [1.0] * 2, [2.0] * 2], [1, 2, 3])] * 3


# ---------------------------------------------------------------------- helpers


def mixed_small_and_large(comm, large_rank):
    n = 3000 if comm.rank == large_rank else comm.rank + 1  # 12 KB: too large to travel inline
    gathered = comm.all_gather(torch.arange(n, dtype=torch.float32))
    equal = comm.all_gather(torch.full((3000,), float(comm.rank)))
    return [g.numel() for g in gathered], [g.sum().item() for g in gathered], [g[0].item() for g in equal]


@pytest.mark.parametrize("large_rank", [0, 2])
def test_all_gather_with_inline_and_large_tensors(dist_world, large_rank: int) -> None:
    sizes = [3000 if r == large_rank else r + 1 for r in range(3)]
    expected = (sizes, [float(s * (s - 1) / 2) for s in sizes], [0.0, 1.0, 2.0])
    assert dist_world(3).run(mixed_small_and_large, large_rank) == [expected] * 3
