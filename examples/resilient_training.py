"""Training that survives a lost rank and takes its replacement back: 4 Gloo workers under
``python -m distcomm run``, one killed with SIGKILL mid-step; the others go on, the agent starts
it again, it rejoins, and the job finishes on 4 ranks.

    python examples/resilient_training.py                  # worker 2 dies at step 7
    python examples/resilient_training.py --kill-rank 0 --kill-step 3
    python -m distcomm run --nproc-per-node 4 examples/resilient_training.py --worker   # the same, by hand

Every rank trains a linear model on its share of a fixed data set (data parallel: gradients
averaged with one all_reduce). At the chosen step the chosen worker kills itself after
computing its gradients, in the middle of the step. The others' all_reduce fails; the
:class:`~distcomm.Resilient` job shrinks to the 3 survivors and goes on, re-splitting the data
by the new ranks. The agent starts the dead worker again; at the next step boundary the live
ranks take it in (ranks follow the seats the workers were launched as), it receives the model
and the step counter, and the job goes on with 4. With shares of equal size the data-parallel
mean gradient is the whole data set's, so every step's loss must equal that of one process
training on all of it (computed here), whatever the number of ranks at that step.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

import torch

from distcomm import Communicator, Resilient, TorchDistCommunicator

STARTED = time.time()
log = logging.getLogger("resilient_training")
SAMPLES, FEATURES, WORKERS = 96, 4, 4  # 96 splits evenly over 4 ranks and over 3
STEP_SECONDS = 0.05
"""Each step sleeps this long (as a real step computes): the replacement has time to arrive."""


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(SAMPLES, FEATURES, generator=generator, dtype=torch.float64)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) + 0.5
    return inputs, targets


def initial_state() -> dict[str, torch.Tensor]:
    return {"weight": torch.zeros(FEATURES, dtype=torch.float64), "bias": torch.zeros((), dtype=torch.float64)}


def loss_and_grads(state: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    weight, bias = state["weight"].clone().requires_grad_(), state["bias"].clone().requires_grad_()
    loss = ((inputs @ weight + bias - targets) ** 2).mean()
    loss.backward()
    return loss.item(), {"weight": weight.grad, "bias": bias.grad}  # type: ignore[dict-item]


def mark(event: str) -> None:
    """A moment benchmarks/goals.py times the rejoin by (printed only when DISTCOMM_EXAMPLE_TIMES=1)."""
    if os.environ.get("DISTCOMM_EXAMPLE_TIMES") == "1":
        print(f"TIMING {event}", flush=True)


def reference(steps: int, lr: float = 0.05) -> list[float]:
    """The same training in one process on the whole data set (what 3 or 4 equal shares average to)."""
    inputs, targets = data()
    state = initial_state()
    losses = []
    for _ in range(steps):
        loss, grads = loss_and_grads(state, inputs, targets)
        for name, grad in grads.items():
            state[name] -= lr * grad
        losses.append(loss)
    return losses


def worker(steps: int, kills: list[tuple[int, int]], lr: float = 0.05) -> None:
    """One worker of the job: trains ``steps`` steps, and on until every seat is back (at most 400 more)."""
    seat, replacement = int(os.environ["RANK"]), os.environ.get("DISTCOMM_JOIN") == "1"
    logging.basicConfig(level=logging.WARNING, format=f"[seat {seat}] %(message)s")
    log.setLevel(logging.INFO)
    inputs, targets = data()
    state = {**initial_state(), "step": torch.zeros((), dtype=torch.int64)}
    losses: dict[int, float] = {}
    sizes: dict[int, int] = {}
    marks: dict[str, float] = {}

    def train_step(comm: Communicator) -> None:
        step = int(state["step"])
        mine = slice(comm.rank * SAMPLES // comm.world_size, (comm.rank + 1) * SAMPLES // comm.world_size)
        loss, grads = loss_and_grads(state, inputs[mine], targets[mine])
        time.sleep(STEP_SECONDS)
        if (seat, step) in kills and not replacement:
            mark(f"died {time.time():.6f}")
            os.kill(os.getpid(), signal.SIGKILL)  # mid-step: after the gradients, before they are averaged
        comm.all_reduce(grads, op="mean")
        mean_loss = comm.all_reduce(loss, op="mean")
        for name, grad in grads.items():
            state[name] -= lr * grad
        state["step"] += 1
        losses[step], sizes[step] = mean_loss, comm.world_size
        marks.setdefault("first step", time.time())

    with TorchDistCommunicator.init("gloo", timeout=2) as comm:
        job = Resilient(
            comm, state,
            on_shrink=lambda survivors: mark(f"shrank {time.time():.6f}"),
            on_grow=lambda grown: marks.setdefault("grown", time.time()),
        )  # fmt: skip
        while int(state["step"]) < steps or (job.comm.world_size < WORKERS and int(state["step"]) < steps + 400):
            job.run(train_step)
    if replacement:
        mark(f"replacement {STARTED:.6f} {marks['first step']:.6f}")
    expected = reference(int(state["step"]))
    worst = max(abs(losses[s] - expected[s]) for s in losses)
    if worst > 1e-9:
        raise SystemExit(f"seat {seat}: losses differ from one process training on all the data by {worst:.3g}")
    if job.comm.world_size != WORKERS:
        raise SystemExit(f"seat {seat}: the job ended on {job.comm.world_size} ranks, not {WORKERS}")
    if seat == min(set(range(WORKERS)) - {s for s, _ in kills}):
        shrunk = sum(1 for s in sizes if sizes[s] < WORKERS)
        log.info(
            "lost seat(s) %s at step(s) %s; %d step(s) ran on fewer ranks; seat(s) %s rejoined; finished %d steps on %d ranks",
            job.lost, [step for _, step in kills], shrunk, job.joined, int(state["step"]), WORKERS,
        )  # fmt: skip
        log.info("every step's loss equals one process's on all the data (largest difference %.2g)", worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kill-rank", type=int, default=2, choices=range(WORKERS))
    parser.add_argument("--kill-step", type=int, default=7)
    parser.add_argument("--also-kill", default="", metavar="RANK:STEP", help="a second worker to kill, at a later step")
    parser.add_argument("--worker", action="store_true", help="run as one worker (under python -m distcomm run)")
    args = parser.parse_args()
    kills = [(args.kill_rank, args.kill_step)]
    if args.also_kill:
        rank, step = args.also_kill.split(":")
        kills.append((int(rank), int(step)))
    if args.worker:
        worker(args.steps, kills)
        return
    from distcomm.launch.agent import Agent, AgentConfig

    logging.basicConfig(level=logging.WARNING, format="[distcomm run] %(message)s")
    target = [os.path.abspath(__file__), "--worker", *sys.argv[1:]]
    status = Agent(AgentConfig(target=target, nproc_per_node=WORKERS, warm_start=True)).run()
    if status != 0:
        raise SystemExit(f"the job failed (status {status})")
    print(f"worker {args.kill_rank} was killed at step {args.kill_step}, started again and rejoined; 4 ranks finished with the same losses: OK")


if __name__ == "__main__":
    sys.exit(main())
