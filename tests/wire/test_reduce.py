"""Reductions of many leaves: one buffer per group, and every leaf gets back what it should."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support.transports import BackendCommunicator

from distcomm import InconsistentInputError, LocalCommunicator


def many_leaves(comm):
    r, n = comm.rank, comm.world_size
    grads = {f"w{i}": torch.full((3, 2), float(r + i)) for i in range(20)}
    originals = {k: v for k, v in grads.items()}
    reduced = comm.all_reduce(grads, "mean")
    in_place = all(reduced[k] is originals[k] for k in grads)
    expected = [[(sum(range(n)) / n + i)] * 2 for i in range(20)]
    values_ok = all(reduced[f"w{i}"].tolist() == [expected[i][0:2]] * 3 for i in range(20))
    mixed = comm.all_reduce({"t": torch.tensor([r], dtype=torch.int32), "a": np.array([r, 1.5]), "x": 2, "f": 0.5}, "sum")
    metrics = {f"m{i}": torch.tensor(float(r + i), requires_grad=True) * 1 for i in range(10)}
    before = [m.item() for m in metrics.values()]
    out = comm.reduce_dict(metrics, "sum")
    untouched = [m.item() for m in metrics.values()] == before
    detached = all(not v.requires_grad and v.dim() == 0 for v in out.values())
    return {
        "in place": in_place,
        "values": values_ok,
        "int32 tensor": (str(mixed["t"].dtype), mixed["t"].tolist()),
        "numpy": (type(mixed["a"]).__name__, mixed["a"].tolist()),
        "numbers": (mixed["x"], mixed["f"]),
        "reduce_dict": (untouched, detached, out["m3"].item()),
    }


def many_leaves_expected(n: int) -> dict[str, object]:
    return {
        "in place": True,
        "values": True,
        "int32 tensor": ("torch.int32", [sum(range(n))]),
        "numpy": ("ndarray", [sum(range(n)), 1.5 * n]),
        "numbers": (2 * n, 0.5 * n),
        "reduce_dict": (True, True, float(sum(range(n)) + 3 * n)),
    }


def test_many_leaves_on_real_ranks(dist_world) -> None:
    assert dist_world(2).run(many_leaves) == [many_leaves_expected(2)] * 2


def test_many_leaves_alone() -> None:
    assert many_leaves(LocalCommunicator()) == many_leaves_expected(1)


def test_a_lone_tensor_in_reduce_dict_is_left_alone() -> None:
    loss = torch.tensor(3.0)
    out = LocalCommunicator().reduce_dict({"loss": loss})
    out["loss"].add_(1)
    assert loss.item() == 3.0 and out["loss"] is not loss


def fast_and_general_paths_meet(comm):
    import collections

    from distcomm import InconsistentInputError

    r = comm.rank
    same = {"b": torch.tensor([1.0 + r]), "a": torch.tensor([10.0 * (r + 1)])}
    # rank 0: a plain dict of one dtype (the vectorised path); rank 1: an OrderedDict (the general path)
    data = same if r == 0 else collections.OrderedDict(same)
    summed = comm.all_reduce(data, "sum")
    values = {k: v.tolist() for k, v in summed.items()}
    other = {"a": torch.ones(1), "b": torch.ones(1, dtype=torch.float32 if r == 0 else torch.float64)}
    try:
        comm.all_reduce(other)
    except InconsistentInputError as error:
        return values, str(error)
    return values, "no error"


def test_ranks_on_the_vectorised_and_the_general_path_meet(dist_world) -> None:
    results = dist_world(2).run(fast_and_general_paths_meet)
    assert [values for values, _ in results] == [{"b": [3.0], "a": [30.0]}, {"b": [3.0], "a": [30.0]}]
    messages = {message for _, message in results}
    assert len(messages) == 1 and "first difference at ['b']: rank 0: tensor float32[1] on cpu; rank 1: tensor float64[1] on cpu" in messages.pop()


def small_dicts_every_op(comm):
    r = comm.rank
    ints = {"a": torch.tensor([r + 1, -r], dtype=torch.int32), "b": torch.tensor(r + 2, dtype=torch.int32)}
    out = {op: {k: v.tolist() for k, v in comm.all_reduce({k: t.clone() for k, t in ints.items()}, op).items()}
           for op in ("sum", "min", "max", "product")}  # fmt: skip
    floats = {f"m{i}": torch.tensor(float(r * i)) for i in range(30)}
    out["mean"] = {k: v.item() for k, v in comm.reduce_dict(floats, "mean").items() if k in ("m0", "m29")}
    return out


@pytest.mark.parametrize("world_size", [2, 4])
def test_small_dicts_reduced_with_their_agreement_give_every_op(dist_world, world_size) -> None:
    n = world_size
    ranks = range(n)
    expected = {
        "sum": {"a": [sum(r + 1 for r in ranks), -sum(ranks)], "b": sum(r + 2 for r in ranks)},
        "min": {"a": [1, -(n - 1)], "b": 2},
        "max": {"a": [n, 0], "b": n + 1},
        "product": {"a": [math.prod(r + 1 for r in ranks), math.prod(-r for r in ranks)], "b": math.prod(r + 2 for r in ranks)},
        "mean": {"m0": 0.0, "m29": pytest.approx(29 * sum(ranks) / n)},
    }
    assert dist_world(n).run(small_dicts_every_op) == [expected] * n


def collectives_of_a_small_dict(comm):
    from distcomm.backends.torch_dist import TorchDistBackend

    calls = []

    class Counting(TorchDistBackend):
        def all_reduce(self, tensor, op):
            calls.append("all_reduce")
            super().all_reduce(tensor, op)

        def all_reduce_bitwise_and(self, tensor):  # the call check, on Gloo
            calls.append("all_reduce")
            super().all_reduce_bitwise_and(tensor)

        def all_gather(self, tensor, out=None):
            calls.append("all_gather")
            return super().all_gather(tensor, out)

    counting = BackendCommunicator(Counting())
    small = counting.reduce_dict({f"m{i}": torch.tensor(float(i)) for i in range(50)})
    first = list(calls)
    calls.clear()
    counting.reduce_dict({f"m{i}": torch.ones(4096) for i in range(4)})
    large = list(calls)
    calls.clear()
    floats = counting.reduce_dict({f"m{i}": float(i + comm.rank) for i in range(50)}, "mean")
    return first, large, list(calls), small["m7"].item(), floats["m7"]


def test_a_dict_takes_its_two_word_check_and_one_all_reduce(dist_world) -> None:
    expected = (["all_reduce"] * 2, ["all_reduce"] * 2, ["all_reduce"] * 2, 14.0, 7.5)
    assert dist_world(2).run(collectives_of_a_small_dict) == [expected] * 2


def keys_equal_but_not_alike(comm):
    """Both ranks reduce {1: t} once; then rank 1 passes {True: t}: an equal dict key, another key path."""
    comm.all_reduce({1: torch.ones(2)})
    try:
        comm.all_reduce({True if comm.rank == 1 else 1: torch.ones(2)})
    except InconsistentInputError as error:
        return str(error)
    return "returned"


def test_a_dict_seen_before_with_equal_keys_of_another_type_still_meets_the_agreement(dist_world) -> None:
    assert all("first difference at [1]" in m for m in dist_world(2).run(keys_equal_but_not_alike))
