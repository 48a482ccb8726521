"""Ranks that pass different things: the same right answer, or the same clear error, on every rank.

Every case runs on 2 and 4 real Gloo ranks, plain and under ``CheckedCommunicator``.
A case is a module-level function of the communicator; its expectation says, for each
mode, either the value every rank must return or the error every rank must raise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import pytest
import torch

from distcomm import (
    CheckedCommunicator,
    CollectiveMismatchError,
    Communicator,
    InconsistentInputError,
    InvalidArgumentError,
    distutils,
    use_communicator,
)
from distcomm.wire.mismatch import by_rank, explain

# ------------------------------------------------------------------ the cases


def int_or_float_mean(c: Communicator) -> Any:
    return c.all_reduce(0 if c.rank == 0 else 2.5, "mean")


def dict_keys_in_another_order(c: Communicator) -> Any:
    data = {"a": 1, "b": 10} if c.rank % 2 == 0 else {"b": 10, "a": 1}
    result = c.all_reduce(data)
    return result, list(result)


def reduce_dict_int_or_float(c: Communicator) -> Any:
    return c.reduce_dict({"loss": 1 if c.rank == 0 else 0.5, "batches": 1})


def facade_int_or_float(c: Communicator) -> Any:
    with use_communicator(c):
        return distutils.all_reduce(0 if c.rank == 0 else 2.5, average=True)


def facade_list_keeps_double_precision(c: Communicator) -> Any:
    with use_communicator(c):
        result = distutils.all_reduce([16777217, 0.5] if c.rank == 0 else [1, 0.5])
    return result.dtype.name, result.tolist()


def numpy_scalar_or_float(c: Communicator) -> Any:
    return c.all_reduce(np.float32(1.0) if c.rank == 0 else 1.0)


def int64_sum_overflows(c: Communicator) -> Any:
    return c.all_reduce(2**62)


def huge_int_on_one_rank(c: Communicator) -> Any:
    return c.all_reduce(2**70 if c.rank == 0 else 1)


def int_product_overflows(c: Communicator) -> Any:
    return c.all_reduce({"p": 2**40}, "product")


def int_max_beyond_int64(c: Communicator) -> Any:
    return c.all_reduce([2**64, -3] if c.rank == 0 else [5, 7], "max")


def keys_differ(c: Communicator) -> Any:
    return c.all_reduce({"loss": 1.0, "acc": 0.5} if c.rank == 0 else {"loss": 1.0})


def ninth_leaf_dtype_differs(c: Communicator) -> Any:
    data = {f"k{i}": torch.ones(2) for i in range(10)}
    if c.rank == 1:
        data["k9"] = torch.ones(2, dtype=torch.float64)
    return c.all_reduce(data)


def ops_differ(c: Communicator) -> Any:
    return c.all_reduce({"x": 1.0}, "sum" if c.rank == 0 else "mean")


def broadcast_tensor_or_none(c: Communicator) -> Any:
    return c.broadcast(torch.arange(4.0) if c.rank == 0 else None, src=0)


def broadcast_tensor_missing_in_structure(c: Communicator) -> Any:
    return c.broadcast({"w": torch.zeros(2)} if c.rank == 0 else {"w": None}, src=0)


def broadcast_gives_src_structure(c: Communicator) -> Any:
    mine = torch.full((2,), float(c.rank))
    data = {"w": mine, "step": 3, "extra": [1]} if c.rank == 0 else {"w": mine}
    result = c.broadcast(data, src=0)
    return result["w"] is mine, result["w"].tolist(), result["step"], result["extra"]


def broadcast_object_unpicklable_on_src(c: Communicator) -> Any:
    return c.broadcast_object((lambda: 0) if c.rank == 0 else None, src=0)


def gather_objects_unpicklable_on_one_rank(c: Communicator) -> Any:
    return c.all_gather_object((lambda: 0) if c.rank == 1 else c.rank)


def broadcast_object_list_not_a_list(c: Communicator) -> Any:
    values = [c.rank] if c.rank != 1 else (c.rank,)
    c.broadcast_object_list(values, src=0)  # type: ignore[arg-type]
    return values


def gather_uint64_on_one_rank(c: Communicator) -> Any:
    return c.all_gather(torch.ones(2, dtype=torch.uint64 if c.rank == 1 else torch.int64))


def gather_too_many_dims_on_one_rank(c: Communicator) -> Any:
    return c.all_gather(torch.ones([1] * 17) if c.rank == 1 else torch.ones(1))


def gather_unsigned(c: Communicator) -> Any:
    small = c.all_gather(torch.tensor([c.rank, 65535], dtype=torch.uint16))
    large = c.all_gather(torch.tensor([2**63 + c.rank], dtype=torch.uint64))
    return [t.to(torch.int64).tolist() for t in small], [t.view(torch.int64).item() + 2**63 for t in large]


def split_members_differ(c: Communicator) -> Any:
    return c.split([0, 1] if c.rank == 0 else [1])


def mean_of_tensor_that_requires_grad(c: Communicator) -> Any:
    tensor = torch.full((3,), float(c.rank), requires_grad=True)
    nested = {"x": torch.full((2,), float(c.rank), requires_grad=True)}
    c.all_reduce(tensor, "mean")
    c.all_reduce(nested, "mean")
    return tensor.detach().tolist(), nested["x"].detach().tolist()


# ------------------------------------------------------------ the expectations


@attrs.frozen
class Raises:
    """Every rank raises ``error`` with a message that contains each of ``words``."""

    error: type[BaseException]
    words: tuple[str, ...] = ()


MISMATCH = Raises(CollectiveMismatchError, ("ranks made different collective calls",))
Expected = Callable[[int, int], Any] | Raises


def same_kind_and_value(expected: Any) -> Callable[[Any], bool]:
    return lambda got: type(got) is type(expected) and got == expected


# name -> (plain, checked); a callable gets (rank, world size) and returns the value.
EXPECTATIONS: dict[str, tuple[Expected, Expected]] = {
    "int_or_float_mean": (lambda r, n: 2.5 * (n - 1) / n, MISMATCH),
    "dict_keys_in_another_order": (
        lambda r, n: ({"a": n, "b": 10 * n}, ["a", "b"] if r % 2 == 0 else ["b", "a"]),
        lambda r, n: ({"a": n, "b": 10 * n}, ["a", "b"] if r % 2 == 0 else ["b", "a"]),
    ),
    "reduce_dict_int_or_float": (lambda r, n: {"loss": 1 + 0.5 * (n - 1), "batches": n}, MISMATCH),
    "facade_int_or_float": (lambda r, n: 2.5 * (n - 1) / n, MISMATCH),
    "facade_list_keeps_double_precision": (
        lambda r, n: ("float64", [16777217.0 + n - 1, 0.5 * n]),
        lambda r, n: ("float64", [16777217.0 + n - 1, 0.5 * n]),
    ),
    "numpy_scalar_or_float": (Raises(InconsistentInputError, ("top level", "numpy scalar float32", "number")), MISMATCH),
    "int64_sum_overflows": (lambda r, n: n * 2**62, lambda r, n: n * 2**62),
    "huge_int_on_one_rank": (lambda r, n: 2**70 + n - 1, lambda r, n: 2**70 + n - 1),
    "int_product_overflows": (lambda r, n: {"p": 2 ** (40 * n)}, lambda r, n: {"p": 2 ** (40 * n)}),
    "int_max_beyond_int64": (lambda r, n: [2**64, 7], lambda r, n: [2**64, 7]),
    "keys_differ": (Raises(InconsistentInputError, ("['acc']", "rank 0: number", "nothing")), MISMATCH),
    "ninth_leaf_dtype_differs": (Raises(InconsistentInputError, ("['k9']", "float64", "float32")), MISMATCH),
    "ops_differ": (Raises(InconsistentInputError, ("(op)", "all_reduce sum", "all_reduce mean")), MISMATCH),
    "broadcast_tensor_or_none": (Raises(InconsistentInputError, ("top level", "float32[4]", "nothing")), MISMATCH),
    "broadcast_tensor_missing_in_structure": (Raises(InconsistentInputError, ("['w']", "float32[2]", "nothing")), MISMATCH),
    "broadcast_gives_src_structure": (lambda r, n: (True, [0.0, 0.0], 3, [1]), lambda r, n: (True, [0.0, 0.0], 3, [1])),
    "broadcast_object_unpicklable_on_src": (
        Raises(InconsistentInputError, ("rank 0 cannot take part", "cannot be pickled")),
        Raises(InconsistentInputError, ("rank 0 cannot take part", "cannot be pickled")),
    ),
    "gather_objects_unpicklable_on_one_rank": (
        Raises(InconsistentInputError, ("rank 1 cannot take part", "cannot be pickled")),
        Raises(InconsistentInputError, ("rank 1 cannot take part", "cannot be pickled")),
    ),
    "broadcast_object_list_not_a_list": (
        Raises(InconsistentInputError, ("rank 1 cannot take part", "needs a list", "tuple")),
        Raises(InconsistentInputError, ("rank 1 cannot take part", "needs a list", "tuple")),
    ),
    "gather_uint64_on_one_rank": (Raises(InconsistentInputError, ("same dtype", "uint64", "int64")), MISMATCH),
    "gather_too_many_dims_on_one_rank": (Raises(InconsistentInputError, ("rank 1 cannot take part", "17")), MISMATCH),
    "gather_unsigned": (
        lambda r, n: ([[k, 65535] for k in range(n)], list(range(n))),
        lambda r, n: ([[k, 65535] for k in range(n)], list(range(n))),
    ),
    "split_members_differ": (Raises(InconsistentInputError, ("split", "ranks", "[0, 1]", "[1]")), MISMATCH),
    "mean_of_tensor_that_requires_grad": (
        lambda r, n: ([(n - 1) / 2] * 3, [(n - 1) / 2] * 2),
        lambda r, n: ([(n - 1) / 2] * 3, [(n - 1) / 2] * 2),
    ),
}


def run_case(comm: Communicator, name: str, checked: bool) -> Any:
    if checked:
        comm = CheckedCommunicator(comm)
    return globals()[name](comm)


@pytest.mark.parametrize("checked", [False, True], ids=["plain", "checked"])
@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("name", sorted(EXPECTATIONS))
def test_ranks_passing_different_things(dist_world, name: str, world_size: int, checked: bool) -> None:
    expected = EXPECTATIONS[name][checked]
    outcomes = dist_world(world_size).run_outcomes(run_case, name, checked)
    if isinstance(expected, Raises):
        messages = set()
        for outcome in outcomes:
            assert isinstance(outcome.error, expected.error), f"rank {outcome.rank}: {outcome}"
            for word in expected.words:
                assert word in str(outcome.error), f"rank {outcome.rank}: {word!r} not in {outcome.error}"
            messages.add(str(outcome.error).split(" failed on rank ")[-1].split(":", 1)[-1])
        assert len(messages) == 1, f"ranks raised different messages: {messages}"
        return
    for outcome in outcomes:
        assert outcome.ok, f"rank {outcome.rank}: {outcome.error}\n{outcome.traceback}"
        want = expected(outcome.rank, world_size)
        assert outcome.value == want, f"rank {outcome.rank}: {outcome.value!r} != {want!r}"
        assert repr(type(outcome.value)) == repr(type(want))


def test_the_world_stays_usable_after_an_inconsistent_call(dist_world) -> None:
    world = dist_world(2)
    world.start()
    starts = world.starts
    world.run_outcomes(run_case, "keys_differ", False)
    assert world.run(run_case, "int64_sum_overflows", False) == [2**63, 2**63]
    assert world.starts == starts  # an InconsistentInputError leaves the group healthy
    outcomes = world.run_outcomes(run_case, "keys_differ", True)
    assert all(isinstance(o.error, CollectiveMismatchError) for o in outcomes)
    assert world.run(run_case, "int64_sum_overflows", True) == [2**63, 2**63]
    assert world.starts == starts  # so does a mismatch the call check found before any data moved


# ------------------------------------------------------------- message helpers


def test_by_rank_groups_ranks_with_the_same_value() -> None:
    assert by_rank(["float", "str", "float"]) == "ranks 0, 2: float; rank 1: str"


def test_explain_names_problems_first_then_the_first_difference() -> None:
    claims = [(None, (("[a]", "number"),)), ("bad input", ())]
    assert explain("op", claims) == "op: rank 1 cannot take part: bad input"
    claims = [(None, (("[a]", "number"), ("[b]", "number"))), (None, (("[a]", "number"),))]
    assert explain("op", claims) == "op: ranks passed inputs that do not match; first difference at [b]: rank 0: number; rank 1: nothing"


def test_a_world_of_one_needs_no_agreement(local_comm) -> None:
    assert local_comm.all_reduce({"b": 1, "a": 2.5}, "mean") == {"b": 1.0, "a": 2.5}
    assert local_comm.all_reduce(2**70) == 2**70 and local_comm.all_reduce([2**64], "product") == [2**64]
    assert math.isclose(local_comm.all_reduce(10**30, "mean"), 1e30)
    with pytest.raises(InvalidArgumentError, match="cannot take a str"):
        local_comm.all_reduce({"a": "text"})


def one_rank_passes_what_the_dict_fast_path_refuses(c: Communicator, which: str) -> Any:
    odd = {
        "uint64": torch.ones(2, dtype=torch.uint64),
        "conj": torch.tensor([1 + 2j, 3j]).conj(),
        "complex max": torch.ones(2, dtype=torch.complex64),
    }[which]
    plain = torch.ones(2, dtype=odd.dtype if which != "uint64" else torch.int64)
    op = "max" if which == "complex max" else "sum"
    try:
        c.all_reduce({"a": odd if c.rank == 0 else plain}, op)
    except InvalidArgumentError as error:
        return type(error).__name__, str(error)
    return "returned"


@pytest.mark.parametrize("which", ["uint64", "complex max"])
def test_what_the_dict_fast_path_refuses_fails_on_every_rank(dist_world, which: str) -> None:
    outcomes = dist_world(2).run(one_rank_passes_what_the_dict_fast_path_refuses, which)
    assert outcomes[0] == outcomes[1] and outcomes[0] != "returned", outcomes


def one_rank_passes_a_lazy_view_in_a_dict(c: Communicator, which: str) -> Any:
    base = torch.tensor([1 + 2j, 3j]) if which == "conj" else torch.tensor([1.0, -2.0])
    view = base.conj() if which == "conj" else torch._neg_view(base)
    shown = view.clone()  # the values the view shows
    data = {"a": view if c.rank == 0 else shown.clone()}
    c.all_reduce(data)
    return data["a"].tolist(), data["a"] is (view if c.rank == 0 else data["a"]), (shown * 2).tolist()


@pytest.mark.parametrize("which", ["conj", "neg"])
def test_a_lazy_view_in_a_dict_is_reduced_as_the_values_it_shows_and_filled_through_the_view(dist_world, which: str) -> None:
    (zero, same, doubled), (one, _, _) = dist_world(2).run(one_rank_passes_a_lazy_view_in_a_dict, which)
    assert zero == one == doubled and same


def unhashable_op(c: Communicator) -> Any:
    try:
        c.all_reduce(torch.ones(2), ["sum"])
    except InvalidArgumentError as error:
        return str(error)
    return "returned"


def test_an_unhashable_op_on_the_lone_tensor_path_is_a_clear_error(dist_world) -> None:
    assert all("unknown reduce op" in m for m in dist_world(2).run(unhashable_op))


def gather_a_tensor_that_requires_grad(c: Communicator) -> Any:
    small, large = torch.ones(2, requires_grad=True), torch.ones(3000, requires_grad=True)
    return [t.requires_grad for t in c.all_gather(small) + c.all_gather(large)], c.all_gather(small)[1].tolist()


def test_a_tensor_that_requires_grad_gathers_on_every_rank(dist_world) -> None:
    assert dist_world(2).run(gather_a_tensor_that_requires_grad) == [([False] * 4, [1.0, 1.0])] * 2
