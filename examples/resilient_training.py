"""Training that survives a lost rank: 4 Gloo ranks, one killed with SIGKILL mid-epoch, the job
finishes on 3.

    python examples/resilient_training.py                 # rank 2 dies at step 7 of 20
    python examples/resilient_training.py --kill-rank 0 --kill-step 3

Every rank trains a linear model on its share of a fixed data set (data parallel: gradients
averaged with one all_reduce). At the chosen step the chosen rank kills itself after
computing its gradients, in the middle of the step. The others' all_reduce fails; the
:class:`~distcomm.Resilient` job shrinks to the 3 survivors, takes the model and the step
counter from the new rank 0, re-splits the data by the new ranks and goes on. The losses
must match a run that started on 3 ranks from the state the survivors had: with shares
of equal size the data-parallel mean gradient is the whole data set's, so that run is
computed here in one process.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import tempfile

import torch
import torch.multiprocessing as mp

from distcomm import Communicator, Resilient, TorchDistCommunicator

log = logging.getLogger("resilient_training")
SAMPLES, FEATURES = 96, 4  # 96 splits evenly over 4 ranks and over 3


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


def train(comm: Communicator, steps: int, kill: tuple[int, int], lr: float = 0.05) -> tuple[list[float], int, list[int]]:
    """The resilient loop; rank 0's losses by step, the step it shrank at, and the lost ranks."""
    inputs, targets = data()
    state = {**initial_state(), "step": torch.zeros((), dtype=torch.int64)}
    losses: dict[int, float] = {}
    shrank_at: list[int] = []

    def train_step(comm: Communicator) -> None:
        step = int(state["step"])
        mine = slice(comm.rank * SAMPLES // comm.world_size, (comm.rank + 1) * SAMPLES // comm.world_size)
        loss, grads = loss_and_grads(state, inputs[mine], targets[mine])
        if (comm.rank, step) == kill and comm.world_size == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-step: after the gradients, before they are averaged
        comm.all_reduce(grads, op="mean")
        mean_loss = comm.all_reduce(loss, op="mean")
        for name, grad in grads.items():
            state[name] -= lr * grad
        state["step"] += 1
        losses[step] = mean_loss

    job = Resilient(comm, state, on_shrink=lambda survivors: shrank_at.append(int(state["step"])))
    while int(state["step"]) < steps:
        job.run(train_step)
    return [losses[s] for s in range(steps)], shrank_at[0] if shrank_at else -1, job.lost


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


def run_rank(rank: int, rendezvous: str, steps: int, kill: tuple[int, int]) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(message)s")
    log.setLevel(logging.INFO)
    with TorchDistCommunicator.init("gloo", rank=rank, world_size=4, init_method=rendezvous, timeout=2) as comm:
        losses, shrank_at, lost = train(comm, steps, kill)
        expected = reference(steps)
        worst = max(abs(a - b) for a, b in zip(losses, expected))
        if worst > 1e-9:
            raise SystemExit(f"rank {rank}: losses differ from the run that started on 3 ranks by {worst:.3g}")
        if rank == min(r for r in range(4) if r != kill[0]):
            log.info("lost rank(s) %s at step %d; finished %d steps on 3 ranks", lost, shrank_at, steps)
            log.info("every step's loss equals the run from the same state (largest difference %.2g)", worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kill-rank", type=int, default=2, choices=range(4))
    parser.add_argument("--kill-step", type=int, default=7)
    args = parser.parse_args()
    kill = (args.kill_rank, args.kill_step)
    # Ranks are forked from a server that imports torch once, not four fresh interpreters.
    multiprocessing.set_forkserver_preload(["torch", "distcomm"])
    with tempfile.TemporaryDirectory() as tmp:  # a file rendezvous: its store outlives any rank
        context = mp.start_processes(
            run_rank, args=(f"file://{tmp}/rendezvous", args.steps, kill), nprocs=4, join=False, start_method="forkserver"
        )
        for process in context.processes:
            process.join(120)
        codes = [process.exitcode for process in context.processes]
    expected = [-signal.SIGKILL if r == args.kill_rank else 0 for r in range(4)]
    if codes != expected:
        raise SystemExit(f"exit codes {codes}, expected {expected}")
    print(f"rank {args.kill_rank} was killed at step {args.kill_step}; 3 ranks finished with the same losses: OK")


if __name__ == "__main__":
    main()
