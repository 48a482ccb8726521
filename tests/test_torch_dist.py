"""TorchDistCommunicator over real Gloo process groups: collectives, bad input, failures."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from distcomm import CollectiveError, ConfigurationError, DistCommError, InvalidArgumentError, TorchDistCommunicator
from distcomm.testing import RankDiedError, World


@pytest.fixture
def fast_failing_world():
    """Two ranks of their own whose collectives time out after 2 s, for failure tests: a fresh
    world for each test, since a test that catches a failure leaves a broken group behind that the
    world cannot see (its ranks all returned)."""
    with World(2, timeout=2.0, call_timeout=30.0) as world:
        yield world


# ---------------------------------------------------------------- bad input


def reduce_text(comm):
    return comm.all_reduce("text")


def broadcast_from(comm, src):
    return comm.broadcast(torch.zeros(1), src=src)


def gather_mixed_dtypes(comm):
    return comm.all_gather(torch.zeros(2, dtype=torch.float32 if comm.rank == 0 else torch.int64))


def gather_mixed_dims(comm):
    return comm.all_gather(torch.zeros(2) if comm.rank == 0 else torch.zeros(2, 1))


def test_bad_input_raises_on_every_rank_before_communicating(dist_world) -> None:
    world = dist_world(2)
    world.run(lambda_free_barrier)
    starts = world.starts
    outcomes = world.run_outcomes(reduce_text)
    assert all(isinstance(o.error, InvalidArgumentError) for o in outcomes)
    assert "all_reduce cannot take a str" in str(outcomes[0].error)
    for src in (2, -1, "0", True, 1.0):
        outcomes = world.run_outcomes(broadcast_from, src)
        assert all(isinstance(o.error, InvalidArgumentError) for o in outcomes), src
    assert "src=2 is outside the group; ranks go from 0 to 1" in str(world.run_outcomes(broadcast_from, 2)[1].error)
    world.run(lambda_free_barrier)
    assert world.starts == starts, "a clean InvalidArgumentError on every rank must not need a restart"


def lambda_free_barrier(comm):
    comm.barrier()


def test_gather_with_different_dtypes_or_dims_fails_clearly_on_every_rank(dist_world) -> None:
    world = dist_world(2)
    for fn, text in ((gather_mixed_dtypes, "rank 0: float32[2]; rank 1: int64[2]"), (gather_mixed_dims, "rank 1: float32[2, 1]")):
        outcomes = world.run_outcomes(fn)
        assert all(isinstance(o.error, InvalidArgumentError) and text in str(o.error) for o in outcomes), outcomes


# ------------------------------------------------------------- collectives


def uneven_gather(comm):
    r = comm.rank
    shapes = [(0, 3), (2, 3), (1, 1), (3, 2)]
    t = torch.arange(shapes[r][0] * shapes[r][1], dtype=torch.float64).reshape(shapes[r]) + 100 * r
    out = comm.all_gather(t)
    return [(tuple(o.shape), o.dtype, o.sum().item()) for o in out]


def test_all_gather_takes_any_shapes_and_empty_tensors(dist_world) -> None:
    results = dist_world(4).run(uneven_gather)
    expected = [((0, 3), torch.float64, 0.0), ((2, 3), torch.float64, 15.0 + 600), ((1, 1), torch.float64, 200.0), ((3, 2), torch.float64, 15.0 + 1800)]
    assert results == [expected] * 4


def async_ops(comm):
    t = torch.full((3,), float(comm.rank + 1))
    handle = comm.all_reduce_async(t)
    assert handle.wait() is t
    b = torch.full((2,), float(comm.rank))
    comm.broadcast_async(b, src=1).wait()
    ints = torch.tensor([comm.rank], dtype=torch.int16)
    comm.all_reduce_async(ints, "max").wait()
    return t.tolist(), b.tolist(), ints.item(), handle.is_completed()


def test_async_variants_return_handles(dist_world) -> None:
    assert dist_world(2).run(async_ops) == [([3.0] * 3, [1.0, 1.0], 1, True)] * 2


def identity(comm):
    wrapped = TorchDistCommunicator()
    sub = dist.new_group([0, 1])  # every rank takes part in creating a group
    in_sub = TorchDistCommunicator(group=sub) if comm.rank < 2 else None
    sub_size, sub_sum = (in_sub.world_size, in_sub.all_reduce(comm.rank + 1)) if in_sub else (None, None)
    return (wrapped.rank, wrapped.world_size, wrapped.backend, wrapped.device.type, wrapped.local_rank,
            wrapped.is_master, sub_size, sub_sum, repr(wrapped))  # fmt: skip


def test_wrapping_the_default_group_and_a_given_group(dist_world) -> None:
    results = dist_world(3).run(identity)
    for rank, result in enumerate(results):
        in_sub = (2, 3) if rank < 2 else (None, None)
        assert result[:8] == (rank, 3, "gloo", "cpu", rank, rank == 0, *in_sub)
        assert result[8] == f"TorchDistCommunicator(rank={rank}, world_size=3, backend='gloo')"


def non_member(comm):
    group = dist.new_group([0])
    if comm.rank == 0:
        return TorchDistCommunicator(group=group).world_size
    try:
        TorchDistCommunicator(group=group)
    except InvalidArgumentError as error:
        return str(error)


def test_a_non_member_cannot_wrap_a_group(dist_world) -> None:
    results = dist_world(2).run(non_member)
    assert results[0] == 1 and "not a member" in results[1]


def init_twice(comm):
    with pytest.raises(DistCommError, match="already exists"):
        TorchDistCommunicator.init("gloo", rank=comm.rank, world_size=2)
    return True


def test_init_refuses_a_second_default_group(dist_world) -> None:
    assert dist_world(2).run(init_twice) == [True, True]


def close_owned_group(comm):
    with comm:
        comm.barrier()
    closed = not dist.is_initialized()
    try:
        comm.all_reduce(1)
    except DistCommError as error:
        return closed, str(error)


def test_close_destroys_an_owned_group_and_further_use_fails(dist_world) -> None:
    world = dist_world(2)
    starts = world.starts
    assert world.run(close_owned_group) == [(True, "all_reduce on a closed TorchDistCommunicator: create a new communicator")] * 2
    assert world.run(lambda_free_barrier) == [None, None]
    assert world.starts == starts + 1, "a world whose group was destroyed is restarted"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"backend": "carrier-pigeon", "rank": 0, "world_size": 1}, "unknown backend 'carrier-pigeon'"),
     ({"backend": "gloo", "rank": 2, "world_size": 2}, r"rank must be in 0..1"),
     ({"backend": "gloo", "rank": 0, "world_size": 0}, "world_size must be at least 1"),
     ({"backend": "gloo", "rank": 0, "world_size": 1, "timeout": -1}, "timeout must be positive")],
)  # fmt: skip
def test_init_validates_before_creating_a_group(kwargs, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        TorchDistCommunicator.init(init_method="file:///nonexistent/never-used", **kwargs)
    assert not dist.is_initialized()


def test_wrapping_without_a_group_says_what_to_do() -> None:
    with pytest.raises(DistCommError, match="LocalCommunicator"):
        TorchDistCommunicator()


# ----------------------------------------------------------------- failures


def only_rank0_reduces(comm):
    if comm.rank == 0:
        started = time.monotonic()
        try:
            comm.all_reduce(torch.ones(1))
        except RuntimeError as error:  # old code catching RuntimeError still catches it
            return type(error).__name__, str(error), time.monotonic() - started
    return None


def test_a_collective_that_cannot_complete_raises_collective_error_within_the_timeout(fast_failing_world) -> None:
    outcome = fast_failing_world.run_outcomes(only_rank0_reduces)
    name, message, elapsed = outcome[0].value
    assert name == "CollectiveError"
    assert message.startswith("all_reduce failed on rank 0: ") and "Timed out" in message
    assert elapsed < 2.0 + 3.0


def rank1_dies(comm):
    if comm.rank == 1:
        os._exit(3)
    try:
        comm.all_reduce(torch.ones(1))
    except CollectiveError as error:
        return error.operation, error.rank


def test_a_lost_peer_raises_collective_error(fast_failing_world) -> None:
    outcomes = fast_failing_world.run_outcomes(rank1_dies)
    assert outcomes[0].value == ("all_reduce", 0)
    assert isinstance(outcomes[1].error, RankDiedError) and "exit code 3" in str(outcomes[1].error)


PINNING_CHECK = """
import gc, importlib, sys, tempfile, weakref
import distcomm
import torch.distributed as dist
from distcomm import TorchDistCommunicator

comm = TorchDistCommunicator.init("gloo", rank=0, world_size=1, init_method=f"file://{tempfile.mkdtemp()}/r")
group = weakref.ref(comm.group)
for name in ("distcomm.distutils", "torch.distributed.nn.functional"):  # imported while the group exists
    importlib.import_module(name)
comm.close()
gc.collect()
print("freed" if group() is None else "alive")
"""


def test_a_closed_group_is_not_kept_alive_to_abort_the_interpreter_at_exit() -> None:
    # A Gloo group that survives destroy_process_group is torn down during interpreter
    # exit, where its threads abort the process. Modules whose default arguments capture
    # dist.group.WORLD at import time used to keep it alive.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PINNING_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "freed"


def _clear_launcher(monkeypatch) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
                 "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_an_env_rendezvous_without_its_variables_is_a_configuration_error(monkeypatch) -> None:
    _clear_launcher(monkeypatch)
    with pytest.raises(ConfigurationError, match="env:// rendezvous needs MASTER_ADDR and MASTER_PORT"):
        TorchDistCommunicator.init("gloo", rank=0, world_size=1)
    with pytest.raises(ConfigurationError, match="RANK/WORLD_SIZE \\(torchrun\\)"):
        TorchDistCommunicator.init("gloo")
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(ConfigurationError, match="SLURM_PROCID is set but SLURM_NTASKS is not"):
        TorchDistCommunicator.init("gloo")
    assert not dist.is_initialized()


def test_init_reads_rank_and_world_size_from_the_launcher(monkeypatch, tmp_path) -> None:
    _clear_launcher(monkeypatch)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with TorchDistCommunicator.init("gloo", init_method=f"file://{tmp_path}/store", timeout=10) as comm:
        assert (comm.rank, comm.world_size) == (0, 1) and comm.all_reduce(2) == 2
    assert not dist.is_initialized()


def split_after_uneven_histories(comm):
    comm.split([0, 2])  # ranks 0 and 2 now hold one more process group than ranks 1 and 3
    sub = comm.split([1, 2, 3])
    if sub is None:
        return None
    inner = sub.split([0, 1, 2])  # group-local: torch names it from each rank's count of groups
    again = sub.split([1, 2])
    return inner.all_reduce(1), None if again is None else again.all_reduce(1)


def test_a_split_of_a_subgroup_works_whatever_groups_its_ranks_were_in_before(dist_world) -> None:
    assert dist_world(4).run(split_after_uneven_histories) == [None, (3, None), (3, 2), (3, 2)]
