"""NCCL and CUDA: these run where CUDA is available and skip cleanly elsewhere."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from distcomm.testing import World

pytestmark = pytest.mark.integration  # real jobs or subprocesses: left out of the fast loop

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (NCCL puts one rank on each)")


def nccl_collectives(comm):
    """Numbers, lists, objects and cuda tensors on NCCL, with no device set by the caller."""
    r, n = comm.rank, comm.world_size
    assert comm.backend == "nccl" and comm.device.type == "cuda"
    t = torch.full((4,), float(r + 1), device="cuda")
    assert comm.all_reduce(t) is t and t.device.type == "cuda" and t[0].item() == n * (n + 1) / 2
    cpu = torch.ones(2)
    assert comm.all_reduce(cpu) is cpu and cpu.device.type == "cpu" and cpu[0].item() == n
    comm.barrier()
    return (
        comm.all_reduce(r + 1),
        comm.all_reduce([1, 2.5], "max"),
        comm.all_gather_object({"rank": r}),
        comm.broadcast_object("config" if r == 0 else None),
        [tuple(g.shape) for g in comm.all_gather(torch.zeros(r + 1, 2, device="cuda"))],
    )


@needs_cuda
def test_nccl_world_of_one_rank() -> None:
    with World(1, backend="nccl", timeout=30) as world:
        assert world.run(nccl_collectives) == [(1, [1, 2.5], [{"rank": 0}], "config", [(1, 2)])]


@needs_two_gpus
def test_nccl_two_ranks_with_native_uneven_gather() -> None:
    with World(2, backend="nccl", timeout=30) as world:
        for result in world.run(nccl_collectives):
            assert result == (3, [1, 2.5], [{"rank": 0}, {"rank": 1}], "config", [(1, 2), (2, 2)])


def gloo_on_cuda(comm):
    t = torch.full((3,), float(comm.rank + 1), device="cuda")
    comm.all_reduce(t)
    b = torch.full((2,), float(comm.rank), device="cuda")
    comm.broadcast(b, src=1)
    gathered = comm.all_gather(torch.full((comm.rank + 1,), 1.0, device="cuda"))
    return t.device.type, t.tolist(), b.tolist(), [(g.device.type, g.numel()) for g in gathered]


@needs_cuda
def test_gloo_with_two_ranks_on_cuda_tensors() -> None:
    with World(2, backend="gloo", timeout=30) as world:
        assert world.run(gloo_on_cuda) == [("cuda", [3.0] * 3, [1.0, 1.0], [("cuda", 1), ("cuda", 2)])] * 2


@needs_cuda
def test_assign_device_for_local_rank_with_cuda_visible_devices() -> None:
    last = torch.cuda.device_count() - 1
    code = (
        "import torch, os; from distcomm import distutils; "
        f"distutils.assign_device_for_local_rank(False, {last}); "
        "print(os.environ['CUDA_VISIBLE_DEVICES'], torch.cuda.device_count(), distutils.get_device_for_local_rank())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(last), "1", "cuda"]


@needs_cuda
def test_nccl_group_created_directly_without_a_device_set(tmp_path) -> None:
    code = (
        "import torch, torch.distributed as dist; from distcomm import TorchDistCommunicator; "
        f"dist.init_process_group('nccl', init_method='file://{tmp_path}/rdv', rank=0, world_size=1); "
        "comm = TorchDistCommunicator(); comm.barrier(); "
        "print(comm.device, comm.all_gather_object({'a': 1}), comm.all_reduce(2.5), comm.broadcast_object('x')); "
        "dist.destroy_process_group()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cuda:0", "[{'a':", "1}]", "2.5", "x"]


def tensor_paths_without_hidden_syncs(comm):
    """The tensor hot paths under torch's sync debug mode: any hidden device synchronisation raises."""
    grad = torch.ones(1024, device="cuda")
    grads = {f"w{i}": torch.ones(16, device="cuda") for i in range(50)}
    metrics = {f"m{i}": torch.tensor(float(i), device="cuda") for i in range(50)}
    for _ in range(2):  # the first round may initialise lazily; the second must be clean
        torch.cuda.set_sync_debug_mode("error")
        try:
            comm.all_reduce(grad)
            comm.all_reduce(grad, "mean")
            comm.all_reduce(grads, "mean")
            reduced = comm.reduce_dict(metrics, "mean")
            gathered = comm.all_gather(grad, same_shape=True)
            comm.all_reduce_async(grad).wait()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return reduced["m3"].item(), len(gathered)


@needs_cuda
def test_tensor_paths_make_no_hidden_synchronisations() -> None:
    with World(1, backend="nccl", timeout=30) as world:
        assert world.run(tensor_paths_without_hidden_syncs) == [(3.0, 1)]
