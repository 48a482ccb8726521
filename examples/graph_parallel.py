"""Data parallel × graph parallel training on a mesh of local Gloo ranks, checked against one process.

    python examples/graph_parallel.py                  # 4 ranks: 2 data-parallel replicas x 2 graph-parallel ranks
    python examples/graph_parallel.py --dp 1 --gp 4    # one replica, every graph split four ways

The ranks form a mesh ``{"dp": ..., "gp": ...}``. Each data-parallel replica trains on its own
graphs; inside a replica, the nodes of every graph are split across the graph-parallel
ranks. A rank embeds its own nodes, gathers every node's embedding from its group to
compute the graph's context (the gradient of that gather is summed over the group), scores
its own nodes, and the group sums the scores into the graph's energy. Gradients are summed
over the whole world and divided by the number of replicas. A single process trains the
same model on whole graphs; the losses must agree at every step.
"""

from __future__ import annotations

import argparse
import logging

import torch

import distcomm
from distcomm import Communicator, LocalCommunicator

log = logging.getLogger("graph_parallel")
GRAPHS, NODES, FEATURES, HIDDEN = 8, 7, 4, 8


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed set of graphs (nodes x features) and their target energies."""
    generator = torch.Generator().manual_seed(0)
    graphs = torch.randn(GRAPHS, NODES, FEATURES, generator=generator, dtype=torch.float64)
    targets = graphs.pow(2).sum((1, 2)) / NODES
    return graphs, targets


def initial_weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "embed": torch.randn(FEATURES, HIDDEN, generator=generator, dtype=torch.float64) * 0.5,
        "score": torch.randn(HIDDEN, generator=generator, dtype=torch.float64) * 0.5,
    }


def energy(nodes: torch.Tensor, weights: dict[str, torch.Tensor], group: Communicator) -> torch.Tensor:
    """One graph's energy, with its nodes split over ``group`` (a world of one: the whole graph)."""
    mine = group.autograd.scatter_to_group(nodes, dim=0)  # this rank's nodes
    hidden = torch.tanh(mine @ weights["embed"])
    every_node = group.autograd.gather_from_group(hidden, dim=0, sum_grad=True)
    context = every_node.mean(0)
    partial = ((hidden * context) @ weights["score"]).sum()
    return group.autograd.reduce_from_group(partial)  # the whole graph's energy, on every rank of the group


def train(comm: Communicator, dp: int, gp: int, steps: int, lr: float = 0.05) -> list[float]:
    """Train on ``comm``'s ranks as a dp x gp mesh; the mean loss over all graphs, per step."""
    mesh = comm.mesh({"dp": dp, "gp": gp})
    weights = {name: w.requires_grad_() for name, w in initial_weights().items()}
    graphs, targets = data()
    mine = range(mesh.coordinate("dp"), GRAPHS, dp)  # this replica's graphs
    losses = []
    for _ in range(steps):
        loss = sum((energy(graphs[i], weights, mesh["gp"]) - targets[i]) ** 2 for i in mine) / len(mine)
        loss.backward()  # type: ignore[union-attr]
        grads = {name: w.grad for name, w in weights.items()}
        comm.all_reduce(grads, op="sum")  # each gp rank holds the part of its own nodes; dp replicas add
        with torch.no_grad():
            for name, w in weights.items():
                w -= lr * w.grad / dp  # type: ignore[operator]
                w.grad = None
        losses.append(mesh["dp"].all_reduce(loss.item(), op="mean"))  # type: ignore[union-attr]
    return losses


def run_rank(comm: Communicator, dp: int, gp: int, steps: int) -> None:
    rank = comm.rank
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(message)s")
    losses = train(comm, dp, gp, steps)
    reference = train(LocalCommunicator(), 1, 1, steps)  # one process, whole graphs, every graph
    worst = max(abs(a - b) for a, b in zip(losses, reference))
    if worst > 1e-9:
        raise SystemExit(f"rank {rank}: losses differ from the single-process run by {worst:.3g}")
    if rank == 0:
        for step in range(0, steps, max(1, steps // 5)):
            log.info("step %3d  loss %.6f  (single process %.6f)", step, losses[step], reference[step])
        log.info("dp=%d x gp=%d: every step's loss equals the single-process run's (largest difference %.2g)", dp, gp, worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dp", type=int, default=2, help="data-parallel replicas")
    parser.add_argument("--gp", type=int, default=2, help="graph-parallel ranks per replica")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if GRAPHS % args.dp:
        raise SystemExit(f"--dp must divide the {GRAPHS} graphs")
    world_size = args.dp * args.gp
    distcomm.spawn(run_rank, args.dp, args.gp, args.steps, world_size=world_size, timeout=60)
    print(f"trained on {world_size} Gloo ranks (dp={args.dp} x gp={args.gp}); losses match one process: OK")


if __name__ == "__main__":
    main()
