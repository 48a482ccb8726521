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


def derivatives_both_ways(comm, case: str, order: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``comm.rank``'s first (of the linear loss) or second (of the cubic loss) derivative,
    through distcomm and through torch.distributed.nn.functional."""
    import warnings

    results = []
    for use_torch in (False, True):
        x = data(comm.rank, 2 * comm.world_size).requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.13 deprecates these functions
            outputs = through_torch(case, comm.group, x, comm.world_size) if use_torch else distributed(case, comm, x)
            if order == 1:
                loss(outputs, comm.rank).backward()
                results.append(x.grad)
            else:
                (grad,) = torch.autograd.grad(cubic_loss(outputs, comm.rank), x, create_graph=True)
                results.append(torch.autograd.grad((grad * direction(comm.rank, grad)).sum(), x)[0])
    return results[0], results[1]


@pytest.mark.parametrize("n", [2, 3])
def test_gradients_equal_torchs_differentiable_collectives(dist_world, n: int) -> None:
    world = dist_world(n)
    for case in TORCH_CASES:
        for r, (ours, torchs) in enumerate(world.run(derivatives_both_ways, case)):
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


# ------------------------------------------------------------------ second derivatives


def cubic_loss(outputs: list[torch.Tensor], r: int) -> torch.Tensor:
    return sum((weights(r, out, k) * out**3).sum() for k, out in enumerate(outputs))  # type: ignore[return-value]


def direction(r: int, like: torch.Tensor) -> torch.Tensor:
    return torch.linspace(0.5, 1.5, like.numel(), dtype=like.dtype).reshape(like.shape) * (r + 1)


def second_derivative_on_rank(comm, case: str):
    """d/dx_r of sum_s <g_s, v_s>, where g_s is rank s's gradient of the global cubic loss."""
    x = data(comm.rank, SIZE[case](comm.rank)).requires_grad_()
    (grad,) = torch.autograd.grad(cubic_loss(distributed(case, comm, x), comm.rank), x, create_graph=True)
    (second,) = torch.autograd.grad((grad * direction(comm.rank, grad)).sum(), x, allow_unused=True)
    return grad.detach(), torch.zeros_like(x) if second is None else second


def single_process_second_derivatives(case: str, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs = [data(r, SIZE[case](r)).requires_grad_() for r in range(n)]
    total = sum(cubic_loss(reference(case, xs, r), r) for r in range(n))
    grads = torch.autograd.grad(total, xs, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]
    probe = sum((g * direction(r, g)).sum() for r, g in enumerate(grads))
    seconds = torch.autograd.grad(probe, xs, allow_unused=True) if probe.requires_grad else [None] * n  # type: ignore[union-attr]
    return [g.detach() for g in grads], [torch.zeros_like(x) if s is None else s for x, s in zip(xs, seconds)]


@pytest.mark.parametrize("n", [1, 2])
def test_second_derivatives_equal_a_single_process_computation(dist_world, n: int) -> None:
    for case in SIZE:
        if n == 1 and case == "broadcast":
            continue  # from rank 1: a world of one has none
        if n == 1:
            got = [second_derivative_on_rank(LocalCommunicator(), case)]
        else:
            got = dist_world(n).run(second_derivative_on_rank, case)
        grads, seconds = single_process_second_derivatives(case, n)
        for r, ((grad, second), expected_grad, expected_second) in enumerate(zip(got, grads, seconds)):
            torch.testing.assert_close(grad, expected_grad, msg=lambda m, case=case, r=r: f"{case}, rank {r}: {m}")
            torch.testing.assert_close(second, expected_second, msg=lambda m, case=case, r=r: f"{case}, rank {r}: {m}")


def test_second_derivatives_equal_torchs_differentiable_collectives(dist_world) -> None:
    world = dist_world(2)
    for case in TORCH_CASES:
        for r, (ours, torchs) in enumerate(world.run(derivatives_both_ways, case, 2)):
            torch.testing.assert_close(ours, torchs, msg=lambda m, case=case, r=r: f"{case}, rank {r}: {m}")


# ------------------------------------------------------------------ the same error on every rank


def one_rank_wrong(comm, case: str):
    a, wrong = comm.autograd, comm.rank == 1
    x = torch.ones(4, dtype=torch.float64)
    calls = {
        "int64": lambda: a.all_reduce(torch.ones(4, dtype=torch.int64) if wrong else x),
        "max": lambda: a.all_reduce(x, "max" if wrong else "sum"),
        "gather int64": lambda: a.all_gather(torch.ones(4, dtype=torch.int64) if wrong else x),
        "reduce_scatter dim": lambda: a.reduce_scatter(x, dim=3 if wrong else 0),
        "reduce_scatter 0-d": lambda: a.reduce_scatter(torch.tensor(1.0) if wrong else x),
        "broadcast src": lambda: a.broadcast(x, src=9 if wrong else 0),
        "gather_from_group dim": lambda: a.gather_from_group(x, dim=2 if wrong else 0),
        "all_to_all not a list": lambda: a.all_to_all(x if wrong else list(x.split(2))),
    }
    try:
        calls[case]()
    except Exception as error:  # noqa: BLE001
        return type(error).__name__, str(error), comm.all_reduce(1)
    return "returned", "", comm.all_reduce(1)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("int64", "autograd.all_reduce takes a floating-point tensor, got int64[4]"),
        ("max", "autograd.all_reduce: op 'max' has no gradient here"),
        ("gather int64", "autograd.all_gather takes a floating-point tensor"),
        ("reduce_scatter dim", "autograd.reduce_scatter: cannot split or join a tensor of shape [4] along dim 3"),
        ("reduce_scatter 0-d", "autograd.reduce_scatter: cannot split or join a tensor of shape [] along dim 0"),
        ("broadcast src", "autograd.broadcast: src=9 is outside the group"),
        ("gather_from_group dim", "autograd.gather_from_group: cannot split or join a tensor of shape [4] along dim 2"),
        ("all_to_all not a list", "autograd.all_to_all takes a list of one tensor per rank, got float64[4]"),
    ],
)
def test_a_mistake_on_one_rank_raises_the_same_error_on_every_rank(dist_world, case: str, says: str) -> None:
    zero, one = dist_world(2).run(one_rank_wrong, case, timeout=10)
    assert zero == one and zero[0] == "InconsistentInputError" and f"rank 1 cannot take part: {says}" in zero[1], zero
    assert zero[2] == 2  # still in step


def test_bad_dims_are_distcomms_errors_at_every_world_size() -> None:
    a = LocalCommunicator().autograd
    for call in (lambda: a.reduce_scatter(torch.ones(3), dim=1), lambda: a.scatter_to_group(torch.tensor(2.0)),
                 lambda: a.gather_from_group(torch.ones(2, 2), dim=-3)):  # fmt: skip
        with pytest.raises(InvalidArgumentError, match="cannot split or join"):
            call()
