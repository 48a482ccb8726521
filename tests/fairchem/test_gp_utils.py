"""fairchem's graph parallelism over distcomm: the dp × gp grid and the region functions, with
gradients checked against single-process computations on 4 real Gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from distcomm import ConfigurationError, InvalidArgumentError, LocalCommunicator, use_communicator
from distcomm.fairchem import gp_utils


def rows(natoms: int = 5) -> torch.Tensor:
    return torch.arange(natoms * 3, dtype=torch.float64).reshape(natoms, 3) / 7 - 1


def graph_parallel_step(comm):
    with use_communicator(comm):
        gp_utils.setup_gp({"gp_gpus": 2, "distributed_backend": "gloo"})
        try:
            layout = (gp_utils.get_gp_rank(), gp_utils.get_dp_rank(), gp_utils.get_gp_world_size(), gp_utils.get_dp_world_size(),
                      dist.get_process_group_ranks(gp_utils.get_gp_group()), dist.get_process_group_ranks(gp_utils.get_dp_group()))  # fmt: skip
            x = rows().requires_grad_()  # the same graph on both ranks of a gp group
            part = gp_utils.scatter_to_model_parallel_region(x) * (gp_utils.get_gp_rank() + 2)
            full = gp_utils.gather_from_model_parallel_region(part, natoms=5)
            energy = gp_utils.reduce_from_model_parallel_region((part**2).sum())
            (full.sum() + energy).backward()  # the same loss on every gp rank
            summed = rows().requires_grad_()
            gathered = gp_utils.gather_from_model_parallel_region_sum_grad(summed[:2] if layout[0] == 0 else summed[2:], 5)
            (gathered * (gp_utils.get_gp_rank() + 1)).sum().backward()  # different losses: their sum counts
            scaled = torch.ones(2, requires_grad=True)
            gp_utils.scale_backward_grad(scaled).sum().backward()
            return layout, x.grad, full.detach(), energy.item(), summed.grad, scaled.grad.tolist()
        finally:
            gp_utils.cleanup_gp()


def test_graph_parallel_regions_match_a_single_process(dist_world) -> None:
    results = dist_world(4).run(graph_parallel_step)
    x = rows().requires_grad_()
    parts = [p * (r + 2) for r, p in enumerate(x.split(gp_utils.size_list_fn(5, 2)))]
    full = torch.cat(parts)
    energy = sum((p**2).sum() for p in parts)
    (full.sum() + energy).backward()
    summed = rows().requires_grad_()
    (torch.cat([summed[:2], summed[2:]]) * 3).sum().backward()  # rank 0's loss weighs 1, rank 1's 2
    for rank, (layout, x_grad, forward, e, s_grad, scaled) in enumerate(results):
        gp, dp = rank % 2, rank // 2
        assert layout == (gp, dp, 2, 2, [2 * dp, 2 * dp + 1], [gp, gp + 2])
        torch.testing.assert_close(forward, full.detach())
        torch.testing.assert_close(x_grad, x.grad)
        assert e == pytest.approx(energy.item())
        own = slice(0, 2) if gp == 0 else slice(2, 5)
        torch.testing.assert_close(s_grad[own], summed.grad[own])
        assert scaled == [2.0, 2.0]


def test_a_world_of_one_has_groups_of_one_and_clear_errors() -> None:
    assert gp_utils.size_list_fn(7, 3) == [3, 2, 2] and gp_utils.get_gp_world_size() == 1 and not gp_utils.initialized()
    with pytest.raises(ConfigurationError, match="call setup_gp"):
        gp_utils.get_gp_rank()
    with use_communicator(LocalCommunicator()):
        with pytest.raises(InvalidArgumentError, match="does not divide"):
            gp_utils.setup_graph_parallel_groups(2, "gloo")
        gp_utils.setup_gp({"gp_gpus": 4, "distributed_backend": "gloo"})  # at most the world size, as fairchem
        try:
            with pytest.raises(ConfigurationError, match="already set up"):
                gp_utils.setup_gp({"gp_gpus": 1, "distributed_backend": "gloo"})
            x = rows().requires_grad_()
            y = gp_utils.gather_from_model_parallel_region(gp_utils.scatter_to_model_parallel_region(x), 5)
            y.sum().backward()
            assert torch.equal(y, x.detach()) and torch.equal(x.grad, torch.ones_like(x)) and gp_utils.get_gp_group() is None
            with pytest.raises(InvalidArgumentError, match="not natoms=4"):
                gp_utils.gather_from_model_parallel_region(x, 4)
        finally:
            gp_utils.cleanup_gp()
