"""What each rank runs for benchmarks/goals.py (importable, so a World can run it)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from distcomm import Communicator, distutils
from distcomm.cli.bench import bench_case, gather_into_tensor, interleaved

__all__ = ["bench_case"]  # goals.py runs it directly, for the hot-path goals


def all_reduce_overhead(comm: Communicator, size: int, calls: int) -> dict[str, float]:
    return bench_case(comm, "all_reduce", size, calls, "cpu")


def reduce_dict_vs_calls(comm: Communicator, calls: int) -> dict[str, float]:
    metrics = {f"metric_{i}": float(i + comm.rank) for i in range(50)}
    return interleaved(
        {
            "reduce_dict": lambda: comm.reduce_dict(metrics),
            "50 all_reduce": lambda: {k: comm.all_reduce(v) for k, v in metrics.items()},
            "50 raw all_reduce": lambda: {k: _raw_scalar(v) for k, v in metrics.items()},
        },
        calls,
        comm.barrier,
    )


def agreement_cost(comm: Communicator, calls: int) -> dict[str, float]:
    """reduce_dict of 50 floats (layout agreement included) against what a user writes by hand:
    one tensor, one all_reduce, one tolist(); and that idiom plus one small all_gather, the
    collective that the agreement adds."""
    metrics = {f"metric_{i}": float(i + comm.rank) for i in range(50)}
    header = torch.zeros(5, dtype=torch.int64)
    headers = torch.empty(5 * comm.world_size, dtype=torch.int64)

    def by_hand() -> dict[str, float]:
        flat = torch.tensor(list(metrics.values()), dtype=torch.float64)
        dist.all_reduce(flat)
        return dict(zip(metrics, flat.tolist()))

    def by_hand_with_header() -> dict[str, float]:
        gather_into_tensor(headers, header)
        return by_hand()

    return interleaved(
        {"reduce_dict": lambda: comm.reduce_dict(metrics), "by hand": by_hand, "by hand + header": by_hand_with_header},
        calls,
        comm.barrier,
    )


def _raw_scalar(value: float) -> float:
    tensor = torch.tensor(value)
    dist.all_reduce(tensor)
    return tensor.item()


def uneven_gather_vs_object(comm: Communicator, calls: int) -> dict[str, float]:
    tensor = torch.randn(750_000 + 1000 * comm.rank)  # about 3 MB, a different length on each rank
    outputs: list[Any] = [None] * comm.world_size
    equal = torch.randn(751_000)
    equal_outputs = [torch.empty_like(equal) for _ in range(comm.world_size)]
    return interleaved(
        {
            "distcomm all_gather": lambda: comm.all_gather(tensor),
            "torch all_gather_object": lambda: dist.all_gather_object(outputs, tensor),
            # the floor: moving the same bytes with sizes known in advance and buffers reused
            "raw equal-size all_gather": lambda: dist.all_gather(equal_outputs, equal),
        },
        calls,
        comm.barrier,
    )


def small_objects(comm: Communicator, calls: int) -> dict[str, float]:
    metrics = {"epoch": 3, "loss": 0.25 + comm.rank, "names": [f"layer{i}" for i in range(40)], "lr": 1e-3}
    config = {"model": "resnet", "layers": list(range(100)), "dropout": 0.1} if comm.rank == 0 else None
    gathered: list[Any] = [None] * comm.world_size
    boxed = [config]
    return interleaved(
        {
            "distcomm all_gather_object": lambda: comm.all_gather_object(metrics),
            "torch all_gather_object": lambda: dist.all_gather_object(gathered, metrics),
            "distcomm broadcast_object": lambda: comm.broadcast_object(config, src=0),
            "torch broadcast_object_list": lambda: dist.broadcast_object_list(boxed, src=0),
        },
        calls,
        comm.barrier,
    )


# ----------------------------------------------------------- single process


def old_get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def old_get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def old_all_reduce(data: Any, average: bool = False) -> Any:
    """The legacy function at world size 1: return the input as it is."""
    if old_get_world_size() == 1:
        return data
    raise AssertionError("single-process benchmark")


def hot_path(calls: int) -> dict[str, float]:
    """get_rank() plus all_reduce(float), old style against the facade; medians of batches."""
    batch = 200

    def old() -> None:
        for _ in range(batch):
            old_get_rank()
            old_all_reduce(1.5)

    def new() -> None:
        for _ in range(batch):
            distutils.get_rank()
            distutils.all_reduce(1.5)

    seconds = interleaved({"old style": old, "distutils": new}, calls, lambda: None)
    return {name: value / batch for name, value in seconds.items()}


def setup_cleanup(rounds: int) -> dict[str, float]:
    """setup()+cleanup() of one rank against raw init_process_group+destroy_process_group."""
    from distcomm.launch.launcher import find_free_port

    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.pop(name, None)
    config = {"world_size": 1, "distributed_backend": "gloo", "cpu": True}

    def ours() -> None:
        distutils.setup(dict(config))
        distutils.cleanup()
        for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK"):
            os.environ.pop(name, None)

    def raw() -> None:
        os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(find_free_port()))
        dist.init_process_group("gloo", init_method="env://", rank=0, world_size=1)
        dist.destroy_process_group()
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(name, None)

    return interleaved({"distcomm setup+cleanup": ours, "raw init+destroy": raw}, rounds, lambda: None)


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def overhead_on_fake_group(calls: int) -> dict[str, float]:
    """raw dist.all_reduce, the object API (with the flight recorder, as by default, and without)
    and the facade on torch's fake process group (whose collectives do nothing), alternating
    call by call: the time each adds is its own Python."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # torch's own test backend

    from distcomm import TorchDistCommunicator, set_communicator

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)
    try:
        comm = TorchDistCommunicator()
        unrecorded = TorchDistCommunicator()
        if unrecorded.flight_recorder is not None:
            unrecorded.remove_hook(unrecorded.flight_recorder)
        previous = set_communicator(comm)
        tensor = torch.ones(1)
        result = interleaved(
            {"raw": lambda: dist.all_reduce(tensor), "distcomm": lambda: comm.all_reduce(tensor),
             "facade": lambda: distutils.all_reduce(tensor), "distcomm unrecorded": lambda: unrecorded.all_reduce(tensor)},
            calls,
            lambda: None,
        )  # fmt: skip
        set_communicator(previous)
        return result
    finally:
        dist.destroy_process_group()


def death_to_new_communicator(comm: Communicator, clock: str) -> float | None:
    """Rank 2 dies at the third collective; the others shrink. Seconds from the death to the
    first collective done on the survivors' communicator (``None`` on the rank that died)."""
    import os
    import signal
    from pathlib import Path

    from distcomm import CollectiveError

    for step in range(5):
        if comm.rank == 2 and step == 2:
            Path(clock).write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            comm.all_reduce(torch.ones(4))
        except CollectiveError:
            survivors = comm.shrink()
            survivors.all_reduce(torch.ones(4))
            return time.time() - float(Path(clock).read_text())
    return None


def _flatten_mean(grads: dict[str, torch.Tensor], world_size: int) -> None:
    """torch's flatten idiom for averaging a dict of tensors in place (what DDP's buckets do)."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    leaves = list(grads.values())
    flat = _flatten_dense_tensors(leaves)  # type: ignore[no-untyped-call]
    dist.all_reduce(flat)
    flat.div_(world_size)
    torch._foreach_copy_(leaves, _unflatten_dense_tensors(flat, leaves))  # type: ignore[no-untyped-call]


def promise_price(comm: Communicator, case: str, calls: int) -> dict[str, float]:
    """One checked call against the raw torch.distributed idiom a user writes instead (which checks
    nothing), alternating call by call: what the promise costs. A third way, ``floor``, is the
    least any check apart from the data can cost: the backend's bare two-word AND (one exchange on
    two Gloo ranks, a ring all-reduce on more), and then the raw idiom unless the data rides in
    the check (Gloo ranks: the bitwise form)."""
    n = comm.world_size
    small, large = torch.ones(1), torch.ones(2**18)  # 4 B and 1 MiB of float32
    buffers = [torch.empty_like(large) for _ in range(n)]
    scalars = {f"layer{i}": torch.ones(()) for i in range(50)}
    blocks = {f"layer{i}": torch.ones(4096) for i in range(200)}
    metrics = {f"metric{i}": torch.tensor(float(i)) for i in range(50)}

    def stack_idiom() -> dict[str, float]:
        flat = torch.stack(list(metrics.values()))
        dist.all_reduce(flat)
        return dict(zip(metrics, flat.div_(n).tolist()))

    words = torch.zeros(2, dtype=torch.int64)

    def bare_check() -> None:  # what distcomm's check costs at the least: its two-word AND, nothing around it
        comm.tensor_backend.all_reduce_bitwise_and(words)

    runners: dict[str, dict[str, Callable[[], Any]]] = {
        "barrier": {"distcomm": comm.barrier, "raw": dist.barrier},
        "broadcast 4 B": {"distcomm": lambda: comm.broadcast(small, 0), "raw": lambda: dist.broadcast(small, 0)},
        "broadcast 1 MiB": {"distcomm": lambda: comm.broadcast(large, 0), "raw": lambda: dist.broadcast(large, 0)},
        "all_gather 1 MiB": {"distcomm": lambda: comm.all_gather(large), "raw": lambda: dist.all_gather(buffers, large)},
        "dict of 50 scalars, mean": {"distcomm": lambda: comm.all_reduce(scalars, "mean"), "raw": lambda: _flatten_mean(scalars, n)},
        "dict of 200 x 4096 floats, mean": {"distcomm": lambda: comm.all_reduce(blocks, "mean"), "raw": lambda: _flatten_mean(blocks, n)},
        "reduce_dict of 50 scalars": {"distcomm": lambda: comm.reduce_dict(metrics, "mean"), "raw": stack_idiom},
    }
    chosen = runners[case]
    raw = chosen["raw"]
    # The floor of any separate check: a bare check, and the raw idiom after it unless the data
    # rides in the check (a barrier; a broadcast of at most 8 bytes).
    chosen["floor"] = bare_check if case in ("barrier", "broadcast 4 B") else lambda: (bare_check(), raw())
    return interleaved(chosen, calls, comm.barrier)


PROMISE_CASES = {
    "barrier": 1000,
    "broadcast 4 B": 1000,
    "broadcast 1 MiB": 100,
    "all_gather 1 MiB": 60,
    "dict of 50 scalars, mean": 500,
    "dict of 200 x 4096 floats, mean": 40,
    "reduce_dict of 50 scalars": 500,
}
"""Each case of :func:`promise_price` and its calls per repetition."""
