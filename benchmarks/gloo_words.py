"""What a Gloo all-reduce costs by the number of words it carries: why the call check is two words
(and, on two ranks, what the check's exchange of those words costs instead).

    python benchmarks/gloo_words.py 2        # ranks; add a count of rounds (default 400)

Every size alternates call by call on the same ranks, and each row is the median of its
calls on rank 0. Gloo's ring skips the segments a short buffer leaves empty, so one or two
words cost little and four or more cost as much as 64 (docs/performance.md, the cost model).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _cases() -> dict[str, Callable[[], object]]:
    cases: dict[str, Callable[[], object]] = {"barrier": dist.barrier}
    word = torch.zeros(1, dtype=torch.int64)
    cases["broadcast of 1 word"] = lambda: dist.broadcast(word, 0)
    for count in (1, 2, 3, 4, 8, 64):
        words = torch.zeros(count, dtype=torch.int64)
        cases[f"max of {count} words"] = lambda words=words: dist.all_reduce(words, dist.ReduceOp.MAX)
    pair = torch.zeros(2, dtype=torch.int64)
    cases["bitwise AND of 2 words"] = lambda: dist.all_reduce(pair, dist.ReduceOp.BAND)
    if dist.get_world_size() == 2:  # what distcomm's check does on two Gloo ranks instead
        peer, received = 1 - dist.get_rank(), torch.zeros(2, dtype=torch.int64)

        def exchange() -> None:
            for work in (dist.isend(pair, peer), dist.irecv(received, peer)):
                work.wait()  # type: ignore[union-attr]
            pair.bitwise_and_(received)

        cases["exchange of 2 words"] = exchange
    return cases


def _rank(rank: int, world: int, path: str, rounds: int, results: mp.Queue) -> None:  # type: ignore[type-arg]
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    cases = _cases()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(50):  # warm up every path
        for call in cases.values():
            call()
    for _ in range(rounds):
        for name, call in cases.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    if rank == 0:
        results.put({name: statistics.median(spent) * 1e6 for name, spent in times.items()})
    dist.destroy_process_group()


def main() -> None:
    world = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    path = tempfile.mktemp(prefix="gloo-words-")
    context = mp.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_rank, args=(rank, world, path, rounds, results)) for rank in range(world)]
    for process in ranks:
        process.start()
    medians = results.get()
    for process in ranks:
        process.join()
    for name, median in medians.items():
        print(f"{world} Gloo ranks, {name}: {median:.0f} us")


if __name__ == "__main__":
    main()
