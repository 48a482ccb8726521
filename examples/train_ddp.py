"""Data-parallel training across local ranks, through an injected communicator.

    python examples/train_ddp.py                        # 2 local processes (the default)
    python examples/train_ddp.py --world-size 4
    torchrun --nproc-per-node 8 examples/train_ddp.py   # the same trainer under torchrun
    python examples/train_ddp.py --world-size 1         # one process, LocalCommunicator
    python examples/train_ddp.py --backend gloo         # stay on the CPU where GPUs exist

``--backend auto`` (the default) trains on NCCL with one GPU per rank where there are
enough GPUs, and on Gloo with CPU tensors otherwise; ``--device`` overrides where the
model and data live.

Each rank trains on its own shard of a synthetic regression problem; gradients are
averaged with one ``all_reduce`` per step (all parameters in one collective), and
metrics with another. At the end every rank checks that its weights equal rank 0's.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

import distcomm
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


def choose(backend: str, device: str, ranks_here: int, gpus: int) -> tuple[str, str]:
    """The backend and device type to train on: NCCL and one GPU per rank where there are
    enough GPUs (and nothing asked otherwise), else Gloo on the CPU."""
    if backend == "auto":
        backend = "nccl" if device != "cpu" and gpus >= ranks_here > 0 else "gloo"
    if backend == "nccl" and gpus < ranks_here:
        raise SystemExit(f"NCCL needs one GPU per rank: {ranks_here} ranks here but {gpus} GPU(s); use --backend gloo")
    if device == "auto":
        device = "cuda" if backend == "nccl" else "cpu"
    if device == "cuda" and gpus == 0:
        raise SystemExit("--device cuda needs a CUDA GPU and none is available")
    return backend, device


def train(comm: Communicator, steps: int, device: str = "cpu") -> list[float]:
    torch.manual_seed(comm.rank)  # different initial weights per rank: the broadcast aligns them
    where = torch.device("cuda", comm.local_rank % torch.cuda.device_count()) if device == "cuda" else torch.device("cpu")
    trainer = Trainer(torch.nn.Linear(4, 1).to(where), comm)
    inputs, targets = (t.to(where) for t in shard(comm.rank, comm.world_size))
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


def train_on_rank(comm: Communicator, steps: int, device: str) -> list[float]:
    """One rank of a local run (``distcomm.spawn`` gives it its communicator)."""
    logging.basicConfig(level=logging.INFO, format=f"[rank {comm.rank}] %(message)s")
    return train(comm, steps, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=2, help="local processes to spawn (ignored under torchrun)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ and "MASTER_ADDR" in os.environ:
        backend, device = choose(args.backend, args.device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), gpus)
        logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ['RANK']}] %(message)s")
        with TorchDistCommunicator.init(backend, timeout=60) as comm:  # rank and world size from torchrun
            train(comm, args.steps, device)
    elif args.world_size == 1:
        _, device = choose(args.backend, args.device, 1, gpus)
        logging.basicConfig(level=logging.INFO, format="[local] %(message)s")
        train(LocalCommunicator(), args.steps, device)
    else:
        backend, device = choose(args.backend, args.device, args.world_size, gpus)
        distcomm.spawn(train_on_rank, args.steps, device, world_size=args.world_size, backend=backend, timeout=60)
        print(f"trained on {args.world_size} {'NCCL' if backend == 'nccl' else 'Gloo'} ranks: OK")


if __name__ == "__main__":
    main()
