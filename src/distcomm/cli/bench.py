"""``python -m distcomm bench``: collective timings in the style of nccl-tests, side by side
with raw ``torch.distributed`` in the same run.

Each (operation, size) is timed on a local world of real ranks: raw torch.distributed,
the object API and the ``distutils`` facade alternate call by call, in a rotating
order, so that a noisy machine slows all three alike; the median call is reported.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from distcomm import distutils
from distcomm.communicator import Communicator
from distcomm.debug.profiled import algorithm_bytes, bus_factor
from distcomm.errors import InvalidArgumentError

gather_into_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
"""What a user writes to gather into one tensor: ``all_gather_single`` on torch 2.13, which deprecates
``all_gather_into_tensor`` (and warns on every call); ``all_gather_into_tensor`` before."""
reduce_scatter_from_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
"""Likewise ``reduce_scatter_single`` on torch 2.13, ``reduce_scatter_tensor`` before."""

OPERATIONS = (
    "all_reduce", "all_gather", "broadcast", "all_gather_same", "dict_all_reduce", "reduce_dict",
    "reduce_scatter", "all_to_all_uneven", "send_recv",
)  # fmt: skip
"""The last three compare with what a user writes by hand: :data:`gather_into_tensor` into a
reused buffer (distcomm given ``out=`` too); torch's flatten idiom over a dict of
``--leaves`` tensors of the given size each; ``stack`` + ``all_reduce`` + ``tolist`` of
``--leaves`` scalar metrics. On two or more ranks the hand-written dict idioms also pay
one small header gather, the layout agreement that distcomm adds. The last three compare with
raw torch.distributed given the sizes by hand: ``reduce_scatter`` of one tensor split evenly;
``all_to_all_uneven``, where rank r sends rank j a part of ``(r + j) % world + 1`` shares and
distcomm must exchange the sizes itself; ``send_recv``, a ping-pong between ranks 0 and 1 in
which distcomm's receiver names no shape."""
DICT_LEAVES = 50
"""Tensors in the dict cases, unless ``--leaves`` says otherwise."""
VARIANTS = ("raw", "distcomm", "facade")
_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20, "G": 2**30, "GB": 2**30}


def parse_size(text: str) -> int:
    """``"4"``, ``"64K"``, ``"1MiB"`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise InvalidArgumentError(f"cannot read the size {text!r}: use bytes with an optional K, M or G (e.g. 4, 64K, 1M)")
    return int(match.group(1)) * _UNITS[unit]


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def _runners(comm: Communicator, operation: str, tensor: torch.Tensor, leaves: int = DICT_LEAVES) -> dict[str, Callable[[], Any]]:
    group = getattr(comm, "group", None)
    outputs = [torch.empty_like(tensor) for _ in range(comm.world_size)]
    if operation == "all_reduce":
        return {
            "raw": lambda: dist.all_reduce(tensor, group=group),
            "distcomm": lambda: comm.all_reduce(tensor),
            "facade": lambda: distutils.all_reduce(tensor),
        }
    if operation == "all_gather":
        return {
            "raw": lambda: dist.all_gather(outputs, tensor, group=group),
            "distcomm": lambda: comm.all_gather(tensor),
            "facade": lambda: distutils.all_gather(tensor),
        }
    if operation == "broadcast":
        return {
            "raw": lambda: dist.broadcast(tensor, 0, group=group),
            "distcomm": lambda: comm.broadcast(tensor, 0),
            "facade": lambda: distutils.broadcast(tensor, 0),
        }
    return _idiom_runners(comm, operation, tensor, group, leaves)


def _idiom_runners(comm: Communicator, operation: str, tensor: torch.Tensor, group: Any, leaves: int) -> dict[str, Callable[[], Any]]:
    """Cases without a facade form, against the idiom a user would write instead."""
    header = torch.zeros(4, dtype=torch.int64, device=tensor.device)
    headers = torch.empty(4 * comm.world_size, dtype=torch.int64, device=tensor.device)

    def agree_by_hand() -> None:  # what distcomm's layout agreement costs, paid by the idiom too
        if comm.world_size > 1:
            gather_into_tensor(headers, header, group=group)

    if operation == "all_gather_same":
        out = torch.empty(comm.world_size * tensor.numel(), dtype=tensor.dtype, device=tensor.device)
        reused = torch.empty(comm.world_size, *tensor.shape, dtype=tensor.dtype, device=tensor.device)
        return {
            "raw": lambda: gather_into_tensor(out, tensor, group=group),
            "distcomm": lambda: comm.all_gather(tensor, same_shape=True, out=reused),
            "distcomm, new buffer": lambda: comm.all_gather(tensor, same_shape=True),
        }
    if operation == "dict_all_reduce":
        grads = {f"layer{i}": tensor.clone() for i in range(leaves)}

        def flatten_idiom() -> None:
            agree_by_hand()
            leaves = list(grads.values())
            flat = _flatten_dense_tensors(leaves)  # type: ignore[no-untyped-call]
            dist.all_reduce(flat, group=group)
            flat.div_(comm.world_size)
            torch._foreach_copy_(leaves, _unflatten_dense_tensors(flat, leaves))  # type: ignore[no-untyped-call]

        return {"raw": flatten_idiom, "distcomm": lambda: comm.all_reduce(grads, "mean")}
    if operation == "reduce_dict":
        metrics = {f"metric{i}": torch.tensor(float(i), device=tensor.device) for i in range(leaves)}

        def stack_idiom() -> dict[str, float]:
            agree_by_hand()
            flat = torch.stack(list(metrics.values()))
            dist.all_reduce(flat, group=group)
            return dict(zip(metrics, flat.div_(comm.world_size).tolist()))

        return {"raw": stack_idiom, "distcomm": lambda: comm.reduce_dict(metrics, "mean")}
    return _exchange_runners(comm, operation, tensor, group)


def uneven_splits(numel: int, rank: int, world_size: int) -> list[int]:
    """How many elements rank ``rank`` sends each rank in the uneven all-to-all case."""
    shares = [(rank + j) % world_size + 1 for j in range(world_size)]
    unit = numel // sum(shares)
    return [unit * share for share in shares]


def _exchange_runners(comm: Communicator, operation: str, tensor: torch.Tensor, group: Any) -> dict[str, Callable[[], Any]]:
    """reduce_scatter, uneven all_to_all and send/recv against raw calls given every size by hand."""
    n, rank = comm.world_size, comm.rank
    if operation == "reduce_scatter":
        even = tensor[: tensor.numel() // n * n]
        out = torch.empty(even.numel() // n, dtype=tensor.dtype, device=tensor.device)
        return {"raw": lambda: reduce_scatter_from_tensor(out, even, group=group), "distcomm": lambda: comm.reduce_scatter(even)}
    if operation == "all_to_all_uneven":
        sends = uneven_splits(tensor.numel(), rank, n)
        receives = [uneven_splits(tensor.numel(), j, n)[rank] for j in range(n)]
        source = tensor[: sum(sends)]
        chunks = list(torch.split(source, sends))

        def raw() -> torch.Tensor:  # as a user writes it: the sizes known, a new output for this call's sizes
            out = torch.empty(sum(receives), dtype=tensor.dtype, device=tensor.device)
            dist.all_to_all_single(out, source, receives, sends, group=group)
            return out

        return {
            "raw": raw,
            "distcomm": lambda: comm.all_to_all(chunks),
        }
    if operation == "send_recv":
        received = torch.empty_like(tensor)

        def ping_pong() -> None:
            if rank == 0:
                dist.send(tensor, dist.get_global_rank(group, 1) if group is not None else 1, group=group)
                dist.recv(received, dist.get_global_rank(group, 1) if group is not None else 1, group=group)
            elif rank == 1:
                dist.recv(received, dist.get_global_rank(group, 0) if group is not None else 0, group=group)
                dist.send(received, dist.get_global_rank(group, 0) if group is not None else 0, group=group)

        def ours() -> None:
            if rank == 0:
                comm.send(tensor, 1)
                comm.recv(1)
            elif rank == 1:
                comm.send(comm.recv(0), 0)

        return {"raw": ping_pong, "distcomm": ours}
    raise InvalidArgumentError(f"unknown operation {operation!r}: use one of {', '.join(OPERATIONS)}")


def interleaved(runners: dict[str, Callable[[], Any]], calls: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median seconds per call of each runner. The runners alternate call by call, in a
    rotating order, so drift and noise fall on all of them alike; medians ignore the
    long tail of a shared machine's wake-up latencies."""
    names = list(runners)
    for run in runners.values():  # warm-up
        for _ in range(max(3, calls // 20)):
            run()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for index in range(calls):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            run = runners[name]
            start = clock()
            run()
            samples[name].append(clock() - start)
    sync()
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_case(comm: Communicator, operation: str, size: int, calls: int, device: str, leaves: int = DICT_LEAVES) -> dict[str, float]:
    """Run on every rank of a world: time one operation at one size, three ways."""
    target = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    tensor = torch.ones(max(1, size // 4), dtype=torch.float32, device=target)

    runners = _runners(comm, operation, tensor, leaves)
    if target.type == "cuda":  # time the device's work, not the launch
        runners = {name: _synchronized(run) for name, run in runners.items()}

    def sync() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize()
        comm.barrier()

    return interleaved(runners, calls, sync)


def _synchronized(run: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        result = run()
        torch.cuda.synchronize()
        return result

    return call


def calls_for(size: int) -> int:
    """Calls of each variant: many for small messages, fewer for large ones."""
    return max(50, min(2000, (256 * 2**20) // max(size, 1)))


def table_row(operation: str, size: int, world_size: int, seconds: dict[str, float]) -> str:
    moved = algorithm_bytes(operation, max(4, size // 4 * 4), world_size)
    algbw = moved / seconds["distcomm"] / 1e9
    busbw = algbw * bus_factor(operation, world_size)
    facade = seconds.get("facade")
    facade_columns = f"{'-':>10} {'-':>7}" if facade is None else f"{facade * 1e6:>10.1f} {facade / seconds['raw']:>7.3f}"
    return (
        f"{operation:>15} {format_size(size):>10} {seconds['distcomm'] * 1e6:>11.1f} {algbw:>9.3f} {busbw:>9.3f} "
        f"{seconds['raw'] * 1e6:>9.1f} {seconds['distcomm'] / seconds['raw']:>7.3f} {facade_columns}"
    )


HEADER = (
    f"{'op':>15} {'size':>10} {'time us':>11} {'algbw':>9} {'busbw':>9} {'raw us':>9} {'ratio':>7} {'facade us':>10} {'ratio':>7}\n"
    f"{'':>15} {'':>10} {'':>11} {'GB/s':>9} {'GB/s':>9} {'':>9} {'vs raw':>7} {'':>10} {'vs raw':>7}"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distcomm bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2, help="local processes (default 2)")
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl", "mpi"))
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"), help="where tensors live (default: cuda for nccl)")
    parser.add_argument("--ops", default=",".join(OPERATIONS[:3]), help=f"comma-separated, of: {','.join(OPERATIONS)}")
    parser.add_argument("--sizes", default="4,1K,64K,1M,4M", help="comma-separated message sizes, e.g. 4,1K,1M")
    parser.add_argument("--leaves", type=int, default=DICT_LEAVES, help=f"tensors in the dict cases (default {DICT_LEAVES})")
    parser.add_argument("--calls", type=int, default=None, help="timed calls of each variant per case (default: by size)")
    args = parser.parse_args(argv)
    operations = [op.strip() for op in args.ops.split(",") if op.strip()]
    for op in operations:
        if op not in OPERATIONS:
            parser.error(f"unknown op {op!r}: choose from {', '.join(OPERATIONS)}")
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except InvalidArgumentError as error:
        parser.error(str(error))
    if not sizes:
        parser.error("--sizes names no size: give e.g. 4,1K,1M")
    if args.ranks < 1 or args.leaves < 1 or (args.calls is not None and args.calls < 1):
        parser.error("--ranks, --leaves and --calls take positive numbers")
    device = args.device or ("cuda" if args.backend == "nccl" else "cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.backend == "nccl" and gpus < args.ranks:
        parser.error(f"--backend nccl needs one CUDA GPU per rank: {args.ranks} ranks, {gpus} GPU(s) here; use --backend gloo")
    if device == "cuda" and gpus == 0:
        parser.error("--device cuda needs a CUDA GPU and none is available")
    if args.backend == "mpi" and not dist.is_mpi_available():
        parser.error("--backend mpi: this build of torch has no MPI")
    from distcomm.testing.world import World

    cases = [(op, size) for op in operations for size in sizes]
    print(f"# distcomm bench: {args.ranks} ranks, backend {args.backend}, {device} tensors, torch {torch.__version__}")
    print("# each case: raw torch.distributed, distcomm and distutils alternate call by call; median per call")
    print(HEADER, flush=True)
    with World(args.ranks, backend=args.backend, timeout=120, call_timeout=1800) as world:
        for index, (op, size) in enumerate(cases, 1):
            calls = args.calls or calls_for(size)
            print(f"[{index}/{len(cases)}] {op} {format_size(size)} x {calls} ...", file=sys.stderr, flush=True)
            seconds = world.run(bench_case, op, size, calls, device, args.leaves)[0]
            print(table_row(op, size, args.ranks, seconds), flush=True)
    return 0
