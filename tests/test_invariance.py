"""The promise: the kind of every result depends on the input, never on the world size.

One table of inputs runs on a LocalCommunicator, and on TorchDistCommunicator over
1, 2 and 4 real Gloo ranks. Every rank checks the values it got, and returns a
description of each result's kind: type, dtype, number of dimensions, and whether it
is the input object itself (in place). The descriptions must all be equal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from distcomm import Communicator, LocalCommunicator


def kind(value: Any) -> Any:
    """A world-size-free description of a value's kind."""
    if isinstance(value, torch.Tensor):
        return ("Tensor", str(value.dtype), value.dim(), value.device.type)
    if isinstance(value, np.ndarray):
        return ("ndarray", str(value.dtype), value.ndim)
    if isinstance(value, np.generic):
        return ("numpy scalar", type(value).__name__)
    if isinstance(value, dict):
        return (type(value).__name__, {k: kind(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [kind(v) for v in value])
    return type(value).__name__


def per_rank_kind(values: list[Any], comm: Communicator) -> Any:
    """For results with one entry per rank: check the length, then describe one entry."""
    assert isinstance(values, list), f"expected a list, got {type(values).__name__}"
    assert len(values) == comm.world_size
    kinds = {repr(kind(v)) for v in values}
    assert len(kinds) == 1, f"entries differ in kind: {kinds}"
    return ("list per rank", kind(values[0]))


def same_object(result: Any, data: Any) -> bool | None:
    """In place or not; meaningless (None) for immutable inputs such as small ints."""
    return result is data if isinstance(data, (torch.Tensor, np.ndarray, list, dict)) else None


def close(a: Any, b: Any) -> bool:
    if isinstance(a, (torch.Tensor, np.ndarray)) or isinstance(b, (torch.Tensor, np.ndarray)):
        return bool(np.allclose(np.asarray(a, dtype=np.complex128), np.asarray(b, dtype=np.complex128)))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return bool(a == b or abs(a - b) < 1e-9)


def reduce_cases(comm: Communicator) -> dict[str, tuple[Any, Any, Any]]:
    """name -> (input, result, expected value). Inputs depend on the rank."""
    r, n = comm.rank, comm.world_size
    tri = n * (n + 1) / 2  # sum of (rank + 1)
    cases: dict[str, tuple[Any, Any, Any]] = {}

    def case(name: str, data: Any, op: str, expected: Any) -> None:
        cases[name] = (data, comm.all_reduce(data, op), expected)

    case("float32 tensor sum", torch.full((2, 3), r + 1.0), "sum", torch.full((2, 3), tri))
    case("float64 0-d tensor mean", torch.tensor(r + 1.0, dtype=torch.float64), "mean", torch.tensor(tri / n))
    case("float16 tensor max", torch.tensor([float(r)], dtype=torch.float16), "max", torch.tensor([n - 1.0]))
    case("int64 tensor sum", torch.tensor([r + 1, 1]), "sum", torch.tensor([tri, n]))
    case("int64 tensor mean", torch.tensor([r + 1]), "mean", torch.tensor([tri / n]))
    case("int32 tensor product", torch.tensor([2], dtype=torch.int32), "product", torch.tensor([2**n]))
    case("int16 tensor sum", torch.tensor([1, 2], dtype=torch.int16), "sum", torch.tensor([n, 2 * n]))
    case("uint8 tensor min", torch.tensor([r + 3], dtype=torch.uint8), "min", torch.tensor([3]))
    case("bool tensor min", torch.tensor([True, r == 0]), "min", torch.tensor([True, n == 1]))
    case("bool tensor max", torch.tensor([False, r == 0]), "max", torch.tensor([False, True]))
    case("bool tensor sum", torch.tensor([r == 0, False]), "sum", torch.tensor([True, False]))
    case("bool tensor mean", torch.tensor([r == 0]), "mean", torch.tensor([1.0 / n]))
    case("complex tensor sum", torch.tensor([1 + 1j]), "sum", torch.tensor([n + n * 1j]))
    case("int sum", r + 1, "sum", int(tri))
    case("int mean", r + 1, "mean", tri / n)
    case("int max", r, "max", n - 1)
    case("float sum", 0.5 * (r + 1), "sum", 0.5 * tri)
    case("float product", 2.0, "product", 2.0**n)
    case("bool min", r == 0, "min", n == 1)
    case("bool max", r == 0, "MAX", True)
    case("bool sum", True, "sum", n)
    case("complex sum", 1j, "sum", n * 1j)
    case("list of numbers", [r + 1, 0.5, True], "sum", [int(tri), 0.5 * n, n])
    case("tuple of numbers", (1, 2.0), "mean", (1.0, 2.0))
    case("numpy float32 array", np.full(3, r + 1, dtype=np.float32), "sum", np.full(3, tri))
    case("numpy int64 array mean", np.array([r + 1, 2]), "mean", np.array([tri / n, 2.0]))
    case("numpy float64 scalar", np.float64(r + 1), "sum", tri)
    case("numpy int32 scalar", np.int32(1), "sum", n)
    case("nested dict", {"loss": r + 1.0, "acc": [torch.tensor([1.0]), 2]}, "sum",
         {"loss": tri, "acc": [torch.tensor([float(n)]), 2 * n]})  # fmt: skip
    return cases


def describe_all(comm: Communicator) -> dict[str, Any]:
    """Run the whole table on ``comm``; check values; return each result's kind."""
    r, n = comm.rank, comm.world_size
    kinds: dict[str, Any] = {}
    for name, (data, result, expected) in reduce_cases(comm).items():
        assert close(result, expected), f"all_reduce {name}: got {result!r}, expected {expected!r}"
        kinds[f"all_reduce {name}"] = (kind(result), same_object(result, data))

    t = torch.full((2,), float(r))
    t_src = torch.full((2,), 7.0) if r == 0 else torch.zeros(2)
    filled = comm.broadcast(t_src)
    kinds["broadcast tensor"] = (kind(filled), filled is t_src)
    assert torch.equal(t_src, torch.full((2,), 7.0))
    number = comm.broadcast(3 if r == 0 else None)
    assert number == 3
    kinds["broadcast int"] = kind(number)
    nested = {"w": torch.full((1,), float(r)), "step": 10 + r}
    out = comm.broadcast(nested)
    assert out["step"] == 10 and torch.equal(nested["w"], torch.zeros(1))
    kinds["broadcast dict"] = (kind(out), out["w"] is nested["w"])

    gathered = comm.all_gather(t)
    assert all(torch.equal(g, torch.full((2,), float(i))) for i, g in enumerate(gathered))
    kinds["all_gather tensor"] = (per_rank_kind(gathered, comm), any(g is t for g in gathered))
    kinds["all_gather int"] = per_rank_kind(comm.all_gather(r), comm)
    kinds["all_gather float"] = per_rank_kind(comm.all_gather(float(r)), comm)
    kinds["all_gather numpy"] = per_rank_kind(comm.all_gather(np.arange(3)), comm)
    kinds["all_gather list"] = per_rank_kind(comm.all_gather([r, 1.0]), comm)
    gathered_dict = comm.all_gather({"x": t, "n": r})
    assert [d["n"] for d in gathered_dict] == list(range(n))
    kinds["all_gather dict"] = per_rank_kind(gathered_dict, comm)

    objects = comm.all_gather_object({"rank": r})
    assert objects == [{"rank": i} for i in range(n)]
    kinds["all_gather_object"] = per_rank_kind(objects, comm)
    at_root = comm.gather_object(("x", r), dst=0)
    kinds["gather_object"] = per_rank_kind(at_root, comm) if r == 0 else None
    if r == 0:
        assert at_root == [("x", i) for i in range(n)]
    else:
        assert at_root is None
    config = comm.broadcast_object({"lr": 0.1} if r == 0 else None)
    assert config == {"lr": 0.1}
    kinds["broadcast_object"] = kind(config)
    items: list[Any] = [r, "x"]
    assert comm.broadcast_object_list(items) is None
    assert items == [0, "x"]
    kinds["broadcast_object_list"] = kind(items)
    kinds |= describe_exchanges(comm)
    comm.barrier()
    return kinds


def rooted_kind(comm: Communicator, result: Any, per_rank: bool = False) -> tuple[Any, bool]:
    """The root's result kind (of one entry per rank, with ``per_rank``) and whether every other
    rank got ``None``: the same on every rank."""
    described = per_rank_kind(result, comm) if per_rank and result is not None else kind(result)
    everyone = comm.all_gather_object(repr(described))
    return everyone[0], all(k == repr(kind(None)) for k in everyone[1:])


def describe_exchanges(comm: Communicator) -> dict[str, Any]:
    """reduce, gather, scatter, reduce_scatter and all_to_all over the same kinds of input."""
    r, n = comm.rank, comm.world_size
    kinds: dict[str, Any] = {}
    tensor = torch.full((2,), r + 1.0)
    reduced = comm.reduce(tensor, dst=0)
    kinds["reduce tensor"] = rooted_kind(comm, reduced), comm.broadcast_object(reduced is tensor)  # in place on the root
    kinds["reduce int mean"] = rooted_kind(comm, comm.reduce(r + 1, op="mean"))
    kinds["reduce dict"] = rooted_kind(comm, comm.reduce({"loss": 1.0, "n": np.arange(2)}))
    kinds["gather tensor"] = rooted_kind(comm, comm.gather(torch.arange(r + 1)), per_rank=True)
    kinds["gather float"] = rooted_kind(comm, comm.gather(float(r)), per_rank=True)
    scattered = comm.scatter([torch.arange(i + 1) for i in range(n)] if r == 0 else None)
    assert scattered.tolist() == list(range(r + 1))
    kinds["scatter tensors"] = kind(scattered)
    kinds["scatter objects"] = kind(comm.scatter([{"i": i} for i in range(n)] if r == 0 else None))
    split = comm.reduce_scatter(torch.ones(2 * n, 3), "mean")
    assert torch.equal(split, torch.ones(2, 3))
    kinds["reduce_scatter tensor"] = kind(split)
    kinds["reduce_scatter int tensor mean"] = kind(comm.reduce_scatter([torch.ones(2, dtype=torch.int64)] * n, "mean"))
    kinds["reduce_scatter floats"] = kind(comm.reduce_scatter([0.5] * n))
    exchanged = comm.all_to_all([torch.full((r + 1,), float(j)) for j in range(n)])
    assert [t.tolist() for t in exchanged] == [[float(r)] * (i + 1) for i in range(n)]
    kinds["all_to_all tensors"] = per_rank_kind(exchanged, comm)
    kinds["all_to_all objects"] = per_rank_kind(comm.all_to_all([(r, j) for j in range(n)]), comm)
    kinds["reduce_scatter_async tensor"] = kind(comm.reduce_scatter_async(torch.ones(2 * n, 3), "mean").wait())
    kinds["all_to_all_async tensors"] = per_rank_kind(comm.all_to_all_async([torch.full((r + 1,), float(j)) for j in range(n)]).wait(), comm)
    return kinds


def test_local_communicator_values_and_kinds() -> None:
    assert describe_all(LocalCommunicator())


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_kinds_equal_local_at_every_world_size(dist_world, world_size: int) -> None:
    expected = describe_all(LocalCommunicator())
    for rank, kinds in enumerate(dist_world(world_size).run(describe_all)):
        different = {k: (kinds[k], expected[k]) for k in expected if kinds.get(k) != expected[k]}
        if rank != 0:  # only rank 0 receives the gather_objects list
            different.pop("gather_object", None)
        assert not different, f"rank {rank} of {world_size}: kinds differ from LocalCommunicator: {different}"
