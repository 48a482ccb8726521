"""Data-parallel training across local Gloo ranks, through an injected communicator.

    python examples/train_ddp.py                        # 2 local processes (the default)
    python examples/train_ddp.py --world-size 4
    torchrun --nproc-per-node 2 examples/train_ddp.py   # the same trainer under torchrun
    python examples/train_ddp.py --world-size 1         # one process, LocalCommunicator

Each rank trains on its own shard of a synthetic regression problem; gradients are
averaged with one ``all_reduce`` per step (all parameters in one collective), and
metrics with another. At the end every rank checks that its weights equal rank 0's.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

import torch
import torch.multiprocessing as mp

from distcomm import Communicator, LocalCommunicator, TorchDistCommunicator

log = logging.getLogger("train_ddp")


class Trainer:
    """A minimal data-parallel trainer: it only knows the communicator it was given."""

    def __init__(self, model: torch.nn.Module, comm: Communicator, lr: float = 0.1) -> None:
        self.model = model
        self.comm = comm
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        # Start every rank from rank 0's weights.
        comm.broadcast({name: p.data for name, p in model.named_parameters()}, src=0)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        self.optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(self.model(inputs), targets)
        loss.backward()
        grads = {name: p.grad for name, p in self.model.named_parameters()}
        self.comm.all_reduce(grads, op="mean")  # in place, one collective for all of them
        self.optimizer.step()
        return self.comm.all_reduce({"loss": loss.item(), "samples": len(inputs)}, op="sum")


def shard(rank: int, world_size: int, samples: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of a fixed synthetic data set: y = x @ w_true + 0.5."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, 4, generator=generator)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.5
    return inputs[rank::world_size], targets[rank::world_size]


def train(comm: Communicator, steps: int) -> list[float]:
    torch.manual_seed(comm.rank)  # different initial weights per rank: the broadcast aligns them
    trainer = Trainer(torch.nn.Linear(4, 1), comm)
    inputs, targets = shard(comm.rank, comm.world_size)
    for step in range(steps):
        metrics = trainer.step(inputs, targets)
        if comm.is_master and (step % 10 == 0 or step == steps - 1):
            log.info("step %3d  mean loss %.5f  over %d samples", step, metrics["loss"] / comm.world_size, metrics["samples"])
    weights = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    everyone = comm.all_gather(weights)
    if not all(torch.equal(w, everyone[0]) for w in everyone):
        raise SystemExit(f"rank {comm.rank}: weights differ across ranks")
    if comm.is_master:
        log.info("all %d ranks hold identical weights: %s", comm.world_size, [round(v, 3) for v in weights.tolist()])
    return weights.tolist()


def run_rank(rank: int, world_size: int, rendezvous: str, steps: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(message)s")
    with TorchDistCommunicator.init("gloo", rank=rank, world_size=world_size, init_method=rendezvous, timeout=60) as comm:
        train(comm, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ and "MASTER_ADDR" in os.environ:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(message)s")
        with TorchDistCommunicator.init("gloo", rank=rank, world_size=world_size, timeout=60) as comm:
            train(comm, args.steps)
    elif args.world_size == 1:
        logging.basicConfig(level=logging.INFO, format="[local] %(message)s")
        train(LocalCommunicator(), args.steps)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(run_rank, args=(args.world_size, f"file://{tmp}/rendezvous", args.steps), nprocs=args.world_size)
        print(f"trained on {args.world_size} Gloo ranks: OK")


if __name__ == "__main__":
    main()
