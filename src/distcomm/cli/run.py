"""``python -m distcomm run``: torchrun's command line, with an agent that keeps the survivors
when a worker dies and starts it again to rejoin (:mod:`distcomm.launch.agent`).

    python -m distcomm run --nproc-per-node 4 train.py --epochs 3
    python -m distcomm run --nnodes 2 --nproc-per-node 8 --rdzv-endpoint node0:29400 --rdzv-id job7 train.py

Tested by tests/launch/test_agent.py.
"""

from __future__ import annotations

import argparse
import logging

from distcomm.launch.agent import RDZV_BACKENDS, Agent, AgentConfig


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(
        prog="python -m distcomm run",
        description="Start a job's workers as torchrun does; when one dies, restart it alone while the others go on "
        "(distcomm.Resilient shrinks past it and takes the replacement back in).",
    )
    options.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=1, help="workers on this node (default 1)")
    options.add_argument("--nnodes", type=int, default=1, help="nodes of the job, each with its own agent (default 1)")
    options.add_argument("--node-rank", "--node_rank", type=int, default=None, help="this node's rank (static rendezvous)")
    options.add_argument("--rdzv-backend", "--rdzv_backend", choices=RDZV_BACKENDS, default="c10d", help="torch's elastic rendezvous (default c10d)")
    options.add_argument("--rdzv-endpoint", "--rdzv_endpoint", default="", help="HOST:PORT of the rendezvous (default: this machine alone)")
    options.add_argument("--rdzv-id", "--rdzv_id", default="", help="the job's id, the same on every node")
    options.add_argument("--local-addr", "--local_addr", default=None, help="this node's address as the others reach it (default: its host name)")
    options.add_argument("--max-restarts", "--max_restarts", type=int, default=3, help="restarts of each worker that dies (default 3)")
    options.add_argument("--monitor-interval", "--monitor_interval", type=float, default=0.1, help="seconds between looks at the workers")
    options.add_argument(
        "--warm-start", action="store_true",
        help="fork workers from a server that has imported torch (milliseconds, not seconds; the script cannot "
        "change what torch reads when imported, such as OMP_NUM_THREADS)",
    )  # fmt: skip
    options.add_argument("-m", dest="module", action="store_true", help="run the target as a module, as python -m does")
    options.add_argument("target", help="the training script (or module, with -m)")
    options.add_argument("arguments", nargs=argparse.REMAINDER, help="the script's own arguments")
    return options


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[distcomm run] %(message)s")
    logging.getLogger("distcomm.launch.agent").setLevel(logging.INFO)  # the agent's progress, as torchrun shows its own
    target = (["-m"] if args.module else []) + [args.target, *args.arguments]
    try:
        config = AgentConfig(
            target=target, nproc_per_node=args.nproc_per_node, nnodes=args.nnodes, node_rank=args.node_rank,
            rdzv_backend=args.rdzv_backend, rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id, local_addr=args.local_addr,
            max_restarts=args.max_restarts, monitor_interval=args.monitor_interval, warm_start=args.warm_start,
        )  # fmt: skip
    except ValueError as error:
        parser().error(str(error))
    return Agent(config).run()
