"""The differentiable collectives: on 2 and 3 real Gloo ranks, every rank's gradient equals the one
a single process computes for the same function (the global loss is the sum of the ranks')."""

from __future__ import annotations

import pytest
import torch

from distcomm import InvalidArgumentError, LocalCommunicator


def data(rank: int, size: int) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, size, dtype=torch.float64) * (rank + 1) + rank


def weights(rank: int, like: torch.Tensor, k: int = 0) -> torch.Tensor:
    return torch.arange(like.numel(), dtype=like.dtype).reshape(like.shape) * (rank + 1) + k + 1


# Each case: (inputs of rank r, what rank r's op gives from every rank's inputs, the distributed call).
SIZE = {"all_reduce": lambda r: 4, "mean": lambda r: 4, "all_gather": lambda r: r + 1, "reduce_scatter": lambda r: 7,
        "all_to_all": lambda r: 5 + r, "broadcast": lambda r: 3, "gather_sum": lambda r: r + 2}  # fmt: skip


def reference(case: str, xs: list[torch.Tensor], r: int) -> list[torch.Tensor]:
    n = len(xs)
    if case == "all_reduce":
        return [sum(xs)]
    if case == "mean":
        return [sum(xs) / n]
    if case == "all_gather":
        return list(xs)
    if case == "reduce_scatter":
        return [sum(torch.tensor_split(x, n)[r] for x in xs)]
    if case == "all_to_all":
        return [torch.tensor_split(x, n)[r] for x in xs]
    if case == "broadcast":
        return [xs[1]]
    return [torch.cat(xs)]  # gather_sum


def distributed(case: str, comm, x: torch.Tensor) -> list[torch.Tensor]:
    a = comm.autograd
    if case == "all_reduce":
        return [a.all_reduce(x)]
    if case == "mean":
        return [a.all_reduce(x, "mean")]
    if case == "all_gather":
        return a.all_gather(x)
    if case == "reduce_scatter":
        return [a.reduce_scatter(x)]
    if case == "all_to_all":
        return a.all_to_all(list(torch.tensor_split(x, comm.world_size)))
    if case == "broadcast":
        return [a.broadcast(x, src=1)]
    return [a.gather_from_group(x, 0, sum_grad=True)]


def loss(outputs: list[torch.Tensor], r: int) -> torch.Tensor:
    return sum((weights(r, out, k) * out).sum() for k, out in enumerate(outputs))  # type: ignore[return-value]


def gradient_on_rank(comm, case: str):
    x = data(comm.rank, SIZE[case](comm.rank)).requires_grad_()
    loss(distributed(case, comm, x), comm.rank).backward()
    return x.grad


def single_process_gradients(case: str, n: int) -> list[torch.Tensor]:
    xs = [data(r, SIZE[case](r)).requires_grad_() for r in range(n)]
    sum(loss(reference(case, xs, r), r) for r in range(n)).backward()  # type: ignore[union-attr]
    return [torch.zeros_like(x) if x.grad is None else x.grad for x in xs]  # an unused input: zeros, as torch's


@pytest.mark.parametrize("n", [2, 3])
def test_gradients_equal_a_single_process_computation(dist_world, n: int) -> None:
    world = dist_world(n)
    for case in SIZE:
        got = world.run(gradient_on_rank, case)
        for r, (mine, expected) in enumerate(zip(got, single_process_gradients(case, n))):
            torch.testing.assert_close(mine, expected, msg=lambda m, case=case, r=r: f"{case}, rank {r}: {m}")


TORCH_CASES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")


def through_torch(case: str, group, x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The same call through torch.distributed.nn.functional (equal shapes, as torch needs)."""
    import torch.distributed.nn.functional as functional

    if case == "all_reduce":
        return [functional.all_reduce(x, group=group)]
    if case == "all_gather":
        return list(functional.all_gather(x, group=group))
    if case == "reduce_scatter":
        return [functional.reduce_scatter(torch.empty(2, dtype=x.dtype), list(x.split(2)), group=group)]
    if case == "all_to_all":
        return list(functional.all_to_all([torch.empty(2, dtype=x.dtype) for _ in range(n)], list(x.split(2)), group=group))
    return [functional.broadcast(x, 1, group=group)]


def gradients_both_ways(comm, case: str) -> tuple[torch.Tensor, torch.Tensor]:
    import warnings

    grads = []
    for use_torch in (False, True):
        x = data(comm.rank, 2 * comm.world_size).requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.13 deprecates these functions
            outputs = through_torch(case, comm.group, x, comm.world_size) if use_torch else distributed(case, comm, x)
            loss(outputs, comm.rank).backward()
        grads.append(x.grad)
    return grads[0], grads[1]


@pytest.mark.parametrize("n", [2, 3])
def test_gradients_equal_torchs_differentiable_collectives(dist_world, n: int) -> None:
    world = dist_world(n)
    for case in TORCH_CASES:
        for r, (ours, torchs) in enumerate(world.run(gradients_both_ways, case)):
            torch.testing.assert_close(ours, torchs, msg=lambda m, case=case, r=r: f"{case}, rank {r}: {m}")


def model_parallel(comm):
    """A tensor replicated on every rank, split across the group and gathered back, as a model-parallel
    layer does: every rank ends with the gradient of the one logical loss."""
    full = data(0, 7).requires_grad_()  # the same values on every rank
    part = comm.autograd.scatter_to_group(full, dim=0) * (comm.rank + 2)
    gathered = comm.autograd.gather_from_group(part, dim=0)
    (weights(0, gathered) * gathered).sum().backward()  # the same loss on every rank
    return full.grad, gathered.detach()


def test_scatter_to_and_gather_from_a_group_train_the_replicated_tensor(dist_world) -> None:
    results = dist_world(3).run(model_parallel)
    full = data(0, 7).requires_grad_()
    parts = [p * (r + 2) for r, p in enumerate(torch.tensor_split(full, 3))]
    gathered = torch.cat(parts)
    (weights(0, gathered) * gathered).sum().backward()
    for grad, forward in results:
        torch.testing.assert_close(forward, gathered.detach())
        torch.testing.assert_close(grad, full.grad)


def test_a_world_of_one_is_the_identity_with_the_identitys_gradient() -> None:
    a = LocalCommunicator().autograd
    x = data(0, 5).requires_grad_()
    outputs = [a.all_reduce(x), a.all_gather(x)[0], a.reduce_scatter(x), a.all_to_all([x])[0], a.broadcast(x),
               a.scatter_to_group(x), a.gather_from_group(x), a.all_reduce(x, "mean")]  # fmt: skip
    sum(out.sum() for out in outputs).backward()
    assert all(torch.equal(out, x.detach()) for out in outputs) and torch.equal(x.grad, torch.full((5,), 8.0, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="has no gradient here"):
        a.all_reduce(x, "max")
    with pytest.raises(InvalidArgumentError, match="floating-point tensor"):
        a.all_gather(torch.ones(2, dtype=torch.int64))
