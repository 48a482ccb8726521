"""reduce, gather, scatter, reduce_scatter and all_to_all: on real Gloo ranks, against a world
of one, with every rank giving the same answer or raising the same error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distcomm import InconsistentInputError, InvalidArgumentError, LocalCommunicator

# ------------------------------------------------------------------ reduce and gather


def rooted(comm):
    r = comm.rank
    tensor = torch.full((2,), float(r + 1))
    reduced = comm.reduce(tensor, dst=1)
    numbers = comm.reduce({"n": r + 1, "x": np.array([r, 1.0])}, dst=0, op="max")
    gathered = comm.gather(torch.arange(r + 1), dst=1)  # shapes differ per rank
    means = comm.reduce(torch.tensor([r + 1, 2]), dst=0, op="mean")  # an integer mean is floating
    return (
        None if reduced is None else (reduced.tolist(), reduced is tensor),
        tensor.tolist(),
        None if numbers is None else (numbers["n"], numbers["x"].tolist()),
        None if gathered is None else [g.tolist() for g in gathered],
        None if means is None else (means.dtype, means.tolist()),
    )


def test_reduce_and_gather_give_the_root_the_result_and_the_others_none(dist_world) -> None:
    zero, one = dist_world(2).run(rooted)
    assert one[0] == ([3.0, 3.0], True) and zero[0] is None
    assert zero[1] == [1.0, 1.0]  # a non-root's tensor is left as it was
    assert zero[2] == (2, [1.0, 1.0]) and one[2] is None
    assert one[3] == [[0], [0, 1]] and zero[3] is None
    assert zero[4] == (torch.float32, [1.5, 2.0]) and one[4] is None


def test_a_world_of_one_gives_the_same_kinds() -> None:
    comm = LocalCommunicator()
    tensor = torch.ones(2)
    assert comm.reduce(tensor) is tensor and comm.reduce(3) == 3 and comm.reduce(2, op="mean") == 2.0
    assert [t.tolist() for t in comm.gather(torch.arange(2))] == [[0, 1]] and comm.gather("x") == ["x"]
    assert comm.scatter([torch.arange(3)]).tolist() == [0, 1, 2] and comm.scatter([{"a": 1}]) == {"a": 1}
    assert [t.tolist() for t in comm.all_to_all([torch.ones(2)])] == [[1.0, 1.0]] and comm.all_to_all([7]) == [7]
    assert comm.reduce_scatter([torch.arange(3)]).tolist() == [0, 1, 2]
    assert comm.reduce_scatter(torch.tensor([1, 2]), "mean").tolist() == [1.0, 2.0] and comm.reduce_scatter([2.5]) == 2.5
    with pytest.raises(InvalidArgumentError, match="dst must be|dst"):
        comm.reduce(1, dst=1)


# ------------------------------------------------------------------ scatter and all_to_all


def scattering(comm):
    chunks = [torch.arange(i + 1, dtype=torch.float64) for i in range(comm.world_size)] if comm.rank == 1 else None
    tensor = comm.scatter(chunks, src=1)
    values = comm.scatter([f"item {i}" for i in range(comm.world_size)] if comm.rank == 0 else None)
    return tensor.dtype, tensor.tolist(), values


def test_scatter_gives_each_rank_its_chunk_of_any_shape(dist_world) -> None:
    results = dist_world(3).run(scattering)
    assert results == [(torch.float64, list(map(float, range(r + 1))), f"item {r}") for r in range(3)]


def exchanging(comm):
    r, n = comm.rank, comm.world_size
    chunks = [torch.full((r + 1, j + 1), 10 * r + j, dtype=torch.int16) for j in range(n)]  # sizes differ per pair
    received = comm.all_to_all(chunks)
    values = comm.all_to_all([(r, j) for j in range(n)])
    return [(t.dtype, tuple(t.shape), t.unique().tolist()) for t in received], values


def test_all_to_all_moves_chunks_whose_sizes_differ_per_pair(dist_world) -> None:
    results = dist_world(3).run(exchanging)
    for me, (received, values) in enumerate(results):
        assert received == [(torch.int16, (j + 1, me + 1), [10 * j + me]) for j in range(3)]
        assert values == [(j, me) for j in range(3)]


def reduce_scattering(comm):
    r, n = comm.rank, comm.world_size
    listed = comm.reduce_scatter([torch.full((i + 1,), float(r + i)) for i in range(n)])
    split = comm.reduce_scatter(torch.arange(7) + r, "max")  # 7 does not divide by 3: 3, 2, 2
    mean = comm.reduce_scatter(torch.tensor([[r, 1], [2, r]]), "mean", dim=1)
    numbers = comm.reduce_scatter([r + i for i in range(n)])
    source = torch.arange(6.0) * (r + 1)
    even = comm.reduce_scatter(source, "mean")  # the lone-tensor path: straight to the backend
    narrow = comm.reduce_scatter([torch.full((2,), r + i, dtype=torch.int16) for i in range(n)], "max")  # Gloo widens int16
    untouched = source.tolist() == (torch.arange(6.0) * (r + 1)).tolist()
    return listed.tolist(), split.tolist(), (mean.dtype, mean.tolist()), numbers, even.tolist(), (narrow.dtype, narrow.tolist()), untouched


def test_reduce_scatter_reduces_each_entry_onto_its_rank(dist_world) -> None:
    results = dist_world(3).run(reduce_scattering)
    splits = [[0, 1, 2], [3, 4], [5, 6]]
    for me, (listed, split, mean, numbers, even, narrow, untouched) in enumerate(results):
        assert listed == [float(sum(r + me for r in range(3)))] * (me + 1)
        assert split == [v + 2 for v in splits[me]]
        assert numbers == sum(r + me for r in range(3))
        assert even == [2.0 * v for v in (2 * me, 2 * me + 1)] and untouched  # mean of (r + 1) over 3 ranks is 2
        assert narrow == (torch.int16, [me + 2] * 2)
    assert results[0][2] == (torch.float32, [[1.0], [2.0]]) and results[1][2] == (torch.float32, [[1.0], [1.0]])


def starting(comm):
    """The async forms against the synchronous ones, with data large enough not to ride with the sizes."""
    r, n = comm.rank, comm.world_size
    big = [torch.full((1000 * (r + 1) + j,), float(10 * r + j)) for j in range(n)]  # sizes differ per pair
    moving = comm.all_to_all_async(big)
    even = torch.arange(3000.0).reshape(n * 1000, -1) * (r + 1)  # splits evenly: reduced in the background
    reducing = comm.reduce_scatter_async(even, "mean")
    uneven = comm.reduce_scatter_async(torch.arange(7) + r, "max")  # done at once, as reduce_scatter does it
    received, part = moving.wait(), reducing.wait()
    part.add_(1)  # the caller's own change: a second wait returns the same tensor, neither copied over nor divided again
    again = reducing.wait().clone()
    part.sub_(1)
    expected = comm.all_to_all(big), comm.reduce_scatter(even, "mean")
    return (
        (moving.asynchronous, reducing.asynchronous, uneven.asynchronous),
        all(torch.equal(a, b) for a, b in zip(received, expected[0])) and len(received) == n,
        [(t.dtype, t.numel(), t.unique().tolist()) for t in received],
        torch.equal(part, expected[1]) and torch.equal(again, expected[1] + 1) and part.shape == (1000, 1),
        uneven.wait().tolist(),
        caught(lambda: comm.all_to_all_async(["a"] * n if r == 0 else [torch.ones(1)] * n)),
    )


def test_async_forms_start_in_the_background_and_match_the_synchronous_ones(dist_world) -> None:
    results = dist_world(3).run(starting)
    splits = [[0, 1, 2], [3, 4], [5, 6]]
    for me, (asynchronous, same, received, same_part, uneven, refused) in enumerate(results):
        assert asynchronous == (True, True, False) and same and same_part
        assert received == [(torch.float32, 1000 * (j + 1) + me, [float(10 * j + me)]) for j in range(3)]
        assert uneven == [v + 2 for v in splits[me]]
        assert refused == results[0][5] and refused[0] == "InvalidArgumentError" and "rank 0" in refused[1]


def test_async_forms_in_a_world_of_one_are_done_at_once() -> None:
    comm = LocalCommunicator()
    moving, reducing = comm.all_to_all_async([torch.arange(3)]), comm.reduce_scatter_async(torch.tensor([1, 3]), "mean")
    assert not moving.asynchronous and [t.tolist() for t in moving.wait()] == [[0, 1, 2]]
    assert not reducing.asynchronous and reducing.wait().tolist() == [1.0, 3.0]


# ------------------------------------------------------------------ the same error on every rank


def caught(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001
        return type(error).__name__, str(error)
    return None


def disagreeing(comm):
    r = comm.rank
    return [
        caught(lambda: comm.all_to_all([torch.ones(1, dtype=torch.float32 if r else torch.float64)] * 2)),
        caught(lambda: comm.all_to_all([torch.ones(1)] * (2 + r))),  # rank 1 passes three chunks
        caught(lambda: comm.reduce_scatter([torch.ones(1 + r), torch.ones(1)])),  # entry 0 differs across ranks
        caught(lambda: comm.scatter([torch.ones(1)] if r == 0 else None)),  # src's list is too short
        caught(lambda: comm.all_to_all([torch.ones(1)] * 2 if r else ["a", "b"])),
        comm.all_reduce(1),  # still in step afterwards
    ]


def test_ranks_that_disagree_raise_the_same_error_and_stay_in_step(dist_world) -> None:
    zero, one = dist_world(2).run(disagreeing)
    assert zero == one
    assert zero[0][0] == "InconsistentInputError" and "float64" in zero[0][1] and "float32" in zero[0][1]
    assert zero[1][0] == "InvalidArgumentError" and "rank 1" in zero[1][1] and "3 entries" in zero[1][1]
    assert zero[2][0] == "InconsistentInputError" and "shapes differ" in zero[2][1]
    assert zero[3][0] == "InvalidArgumentError" and "rank 0" in zero[3][1]
    assert zero[4][0] == "InconsistentInputError" and zero[5] == 2


def test_bad_input_in_a_world_of_one_is_the_same_kind_of_error() -> None:
    comm = LocalCommunicator()
    with pytest.raises(InvalidArgumentError, match="one per rank"):
        comm.all_to_all([torch.ones(1)] * 2)
    with pytest.raises(InvalidArgumentError, match="takes a list of one tensor per rank"):
        comm.all_to_all(torch.ones(2))
    with pytest.raises(InvalidArgumentError, match="not defined for complex"):
        comm.reduce_scatter([torch.ones(1, dtype=torch.complex64)], "max")
    assert issubclass(InconsistentInputError, InvalidArgumentError)


# ------------------------------------------------------------------ a mistake on one rank only


def one_rank_wrong(comm, case: str):
    """Rank 1 alone passes something wrong (or something else); every rank must raise the same error at once."""
    wrong = comm.rank == 1
    calls = {
        "gather dst": lambda: comm.gather(torch.ones(1), dst=3 if wrong else 0),
        "gather dst differs": lambda: comm.gather(torch.ones(1), dst=comm.rank),
        "scatter src": lambda: comm.scatter([torch.ones(1)] * 2 if comm.rank == 0 else None, src=5 if wrong else 0),
        "scatter src differs": lambda: comm.scatter([torch.ones(1)] * 2, src=comm.rank),
        "reduce dst": lambda: comm.reduce(torch.ones(2), dst=-1 if wrong else 0),
        "reduce op": lambda: comm.reduce(torch.ones(2), op="bogus" if wrong else "sum"),
        "reduce op differs": lambda: comm.reduce(torch.ones(2), op="max" if wrong else "sum"),
        "reduce expanded on dst": lambda: comm.reduce(torch.ones(1).expand(3) if comm.rank == 0 else torch.ones(3)),
        "broadcast src": lambda: comm.broadcast(torch.ones(2), src=7 if wrong else 0),
        "broadcast src differs": lambda: comm.broadcast(torch.ones(2), src=comm.rank),
        "reduce_scatter list op": lambda: comm.reduce_scatter([torch.ones(1), torch.ones(1)], "max" if wrong else "sum"),
        "reduce_scatter uneven op": lambda: comm.reduce_scatter(torch.ones(3), "max" if wrong else "sum"),
        "reduce_scatter dicts op": lambda: comm.reduce_scatter([{"a": 1.0}, {"a": 2.0}], "max" if wrong else "sum"),
        "reduce_scatter_async op": lambda: comm.reduce_scatter_async(torch.ones(5), "min" if wrong else "sum").wait(),
        "reduce_scatter bad op": lambda: comm.reduce_scatter(torch.ones(3), "bogus" if wrong else "sum"),
        "reduce_scatter bad dim": lambda: comm.reduce_scatter(torch.ones(3, 3), dim=5 if wrong else 1),
        "reduce_scatter 0-d": lambda: comm.reduce_scatter(torch.tensor(1.0) if wrong else torch.ones(3)),
        "broadcast expanded": lambda: comm.broadcast(torch.ones(1).expand(3) if wrong else torch.ones(3)),
        "all_gather meta": lambda: comm.all_gather(torch.empty(2, device="meta") if wrong else torch.ones(2)),
        "reduce_scatter uint64": lambda: comm.reduce_scatter([torch.ones(1, dtype=torch.uint64 if wrong else torch.int64)] * 2),
    }
    outcome = caught(calls[case])
    return outcome, comm.all_reduce(1)  # still in step afterwards


ONE_RANK_WRONG = {
    "gather dst": ("InconsistentInputError", "rank 1 cannot take part: gather: dst=3 is outside the group"),
    "gather dst differs": ("InconsistentInputError", "rank 0: gather to 0 tensor; rank 1: gather to 1 tensor"),
    "scatter src": ("InconsistentInputError", "rank 1 cannot take part: scatter: src=5 is outside the group"),
    "scatter src differs": ("InconsistentInputError", "rank 0: scatter from 0 objects; rank 1: scatter from 1 objects"),
    "reduce dst": ("InconsistentInputError", "rank 1 cannot take part: reduce: dst=-1 is outside the group"),
    "reduce op": ("InconsistentInputError", "rank 1 cannot take part: reduce: unknown reduce op 'bogus'"),
    "reduce op differs": ("InconsistentInputError", "first difference at (op): rank 0: reduce to 0 sum; rank 1: reduce to 0 max"),
    "reduce expanded on dst": ("InconsistentInputError", "rank 0 cannot take part: reduce to 0: the tensor is an expanded view"),
    "broadcast src": ("InconsistentInputError", "rank 1 cannot take part: broadcast: src=7 is outside the group"),
    "broadcast src differs": ("InconsistentInputError", "rank 0: broadcast from 0 layout; rank 1: broadcast from 1 layout"),
    "reduce_scatter list op": ("InconsistentInputError", "rank 0: reduce_scatter sum objects; rank 1: reduce_scatter max objects"),
    "reduce_scatter uneven op": ("InconsistentInputError", "rank 0: reduce_scatter sum objects; rank 1: reduce_scatter max objects"),
    "reduce_scatter dicts op": ("InconsistentInputError", "rank 0: reduce_scatter sum layout; rank 1: reduce_scatter max layout"),
    "reduce_scatter_async op": ("InconsistentInputError", "rank 0: reduce_scatter sum objects; rank 1: reduce_scatter min objects"),
    "reduce_scatter bad op": ("InconsistentInputError", "rank 1 cannot take part: reduce_scatter: unknown reduce op 'bogus'"),
    "reduce_scatter bad dim": ("InconsistentInputError", "rank 1 cannot take part: reduce_scatter: cannot split a tensor of shape [3, 3] along dim 5"),
    "reduce_scatter 0-d": ("InconsistentInputError", "rank 1 cannot take part: reduce_scatter: cannot split a tensor of shape [] along dim 0"),
    "broadcast expanded": ("InconsistentInputError", "rank 1 cannot take part: broadcast: the tensor is an expanded view"),
    "all_gather meta": ("InconsistentInputError", "rank 1 cannot take part: all_gather: the meta tensor has no data"),
    "reduce_scatter uint64": ("InvalidArgumentError", "rank 1: reduce_scatter: uint64 cannot be reduced on every backend"),
}


@pytest.mark.parametrize("case", ONE_RANK_WRONG)
def test_a_mistake_on_one_rank_raises_the_same_error_on_every_rank_at_once(dist_world, case: str) -> None:
    zero, one = dist_world(2).run(one_rank_wrong, case, timeout=10)
    kind, says = ONE_RANK_WRONG[case]
    assert zero == one, (zero, one)
    assert zero[0][0] == kind and says in zero[0][1], zero[0]
    assert zero[1] == 2


def lazy_views_everywhere(comm):
    """Every view torch allows, on rank 0 only, against plain tensors of the same values elsewhere."""
    def views():
        conj = torch.tensor([1 + 2j, 3 - 1j, 2j, 1 + 0j]).conj()
        return {
            "conj": (conj, conj.resolve_conj()),
            "neg": (torch._neg_view(torch.tensor([1.0, -2.0, 3.0, 4.0])), torch.tensor([-1.0, 2.0, -3.0, -4.0])),
            "expanded": (torch.ones(1).expand(4), torch.ones(4)),
            "strided": (torch.arange(8.0)[::2], torch.tensor([0.0, 2.0, 4.0, 6.0])),
        }

    results = {}
    for name, (view, plain) in views().items():
        mine = view if comm.rank == 0 else plain.clone()
        halves = list(mine.tensor_split(2))
        fresh = views()[name][0]  # filled in place by the reduction: a view of its own (an expanded one cannot be)
        receiver = plain.clone() if name == "expanded" or comm.rank != 0 else fresh
        reduced = comm.reduce(receiver, dst=0)
        results[name] = {
            "gather": [t.tolist() for t in comm.gather(mine, dst=1) or []],
            "all_gather": [t.tolist() for t in comm.all_gather(mine)],
            "same_shape": [t.tolist() for t in comm.all_gather(mine, same_shape=True)],
            "scatter": comm.scatter(halves if comm.rank == 0 else None).tolist(),
            "all_to_all": [t.tolist() for t in comm.all_to_all(halves)],
            "reduce_scatter": comm.reduce_scatter(halves).tolist(),
            "lone reduce_scatter": comm.reduce_scatter(mine).tolist(),  # splits evenly: the lone-tensor path
            "reduce": None if reduced is None else (reduced.tolist(), reduced is receiver),
            "plain": plain.tolist(),
        }
    return results


def test_every_view_torch_allows_is_read_as_the_values_it_shows(dist_world) -> None:
    zero, one = dist_world(2).run(lazy_views_everywhere)
    for name, got in zero.items():
        plain = got["plain"]
        halves = [plain[:2], plain[2:]]
        assert one[name]["gather"] == [plain, plain] and got["gather"] == []
        assert got["all_gather"] == one[name]["all_gather"] == [plain, plain] == got["same_shape"]
        assert [got["scatter"], one[name]["scatter"]] == halves
        assert got["all_to_all"] == [halves[0], halves[0]] and one[name]["all_to_all"] == [halves[1], halves[1]]
        assert [got["reduce_scatter"], one[name]["reduce_scatter"]] == [[2 * v for v in h] for h in halves]
        assert [got["lone reduce_scatter"], one[name]["lone reduce_scatter"]] == [[2 * v for v in h] for h in halves]
        assert got["reduce"] == ([2 * v for v in plain], True) and one[name]["reduce"] is None, name


def entries_of_dicts(comm):
    entries = [{"a": torch.tensor([1.0 + comm.rank])}, {"a": torch.tensor([2.0])}]
    mine = comm.reduce_scatter(entries)
    return mine["a"].tolist(), [e["a"].tolist() for e in entries], mine["a"] is entries[comm.rank]["a"]


def test_reduce_scatter_of_dicts_returns_new_values_and_leaves_the_entries_alone(dist_world) -> None:
    zero, one = dist_world(2).run(entries_of_dicts)
    assert zero == ([3.0], [[1.0], [2.0]], False) and one == ([4.0], [[2.0], [2.0]], False)
    local = LocalCommunicator()
    entries = [{"a": torch.tensor([5.0])}]
    mine = local.reduce_scatter(entries)
    assert mine["a"].tolist() == [5.0] and mine["a"] is not entries[0]["a"]


def unsigned_entries(comm, dtype: torch.dtype):
    return comm.reduce_scatter([torch.full((2,), 7 + comm.rank, dtype=dtype)] * comm.world_size, "max").tolist()


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32])
def test_unsigned_entries_torch_has_no_arithmetic_for_reduce_at_every_world_size(dist_world, dtype: torch.dtype) -> None:
    assert dist_world(2).run(unsigned_entries, dtype) == [[8, 8], [8, 8]]
    assert unsigned_entries(LocalCommunicator(), dtype) == [7, 7]


def forged_sizes(comm):
    """Rank 0 states, in the size agreement, a chunk of 2**40 float32 for rank 1; rank 1 makes an honest all_to_all."""
    from distcomm.wire import all_to_all as exchanging

    try:
        if comm.rank == 0:
            forged = exchanging.Outgoing("float32", ((1,), (2**40,)))
            exchanging.agree_on_sizes(comm._context, forged, "all_to_all")
        else:
            comm.all_to_all([torch.ones(1), torch.ones(1)])
    except Exception as error:  # noqa: BLE001
        return type(error).__name__, str(error)
    return "allocated"


def test_sizes_a_peer_states_are_bounded_before_anything_is_allocated(dist_world) -> None:
    zero, one = dist_world(2).run(forged_sizes)
    assert zero == one and zero[0] == "WireFormatError" and "add up to more than the limit" in zero[1]
