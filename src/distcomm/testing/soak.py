"""A mixed workload of every kind of collective, for soak and memory-stability runs.

``python -m distcomm.testing.soak --ranks 4 --ops 10000`` runs it on a local world and
prints each rank's resident memory as it goes; tests run a shorter one.

Run by benchmarks/soak.py; tests/test_faults.py runs a short soak.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch

from distcomm.communicator import Communicator


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.Process().memory_info().rss)


def mixed_collectives(comm: Communicator, count: int) -> None:
    """``count`` collectives cycling through every kind, with rank-dependent shapes."""
    r = comm.rank
    for i in range(count):
        kind = i % 10
        if kind == 0:
            comm.all_reduce(torch.full((256,), float(r)))
        elif kind == 1:
            comm.all_reduce(float(i))
        elif kind == 2:
            comm.reduce_dict({"loss": float(r), "n": i, "t": torch.ones(3)})
        elif kind == 3:
            comm.all_gather(torch.ones(r + 1 + i % 3, 4))
        elif kind == 4:
            comm.all_gather_object({"rank": r, "step": i})
        elif kind == 5:
            comm.broadcast(torch.zeros(64), src=i % comm.world_size)
        elif kind == 6:
            comm.broadcast_object({"config": i} if r == 0 else None)
        elif kind == 7:
            comm.gather_object(r, dst=i % comm.world_size)
        elif kind == 8:
            comm.all_reduce({"a": [1, 2.0], "b": torch.ones(2, dtype=torch.int64)}, "max")
        else:
            comm.barrier()


def soak(comm: Communicator, count: int, checkpoints: int = 5) -> list[int]:
    """Run the workload in ``checkpoints`` slices; resident bytes after a warm-up and each slice."""
    mixed_collectives(comm, 200)  # warm-up: allocator pools, caches
    gc.collect()
    sizes = [resident_bytes()]
    for _ in range(checkpoints):
        mixed_collectives(comm, count // checkpoints)
        gc.collect()
        sizes.append(resident_bytes())
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--ops", type=int, default=10_000)
    args = parser.parse_args()
    from distcomm.testing.world import World

    with World(args.ranks, timeout=60, call_timeout=3600) as world:
        per_rank = world.run(_soak_rank, args.ops)
    print(f"{args.ops} mixed collectives on {args.ranks} Gloo ranks; resident MiB after warm-up and each fifth:")
    worst = 0.0
    for rank, sizes in enumerate(per_rank):
        growth = (sizes[-1] - sizes[0]) / 2**20
        worst = max(worst, growth)
        print(f"  rank {rank}: " + " ".join(f"{s / 2**20:.1f}" for s in sizes) + f"   growth {growth:+.2f} MiB")
    print(f"largest growth: {worst:+.2f} MiB")


def _soak_rank(comm: Communicator, count: int) -> list[int]:
    return soak(comm, count)


if __name__ == "__main__":
    main()
