"""The agent of ``python -m distcomm run``: torchrun's command line, and a monitor that keeps the
survivors when a worker dies.

torchrun's agent tears every worker of a node down when one fails and starts them all again.
This agent starts the same workers with the same environment (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` of the agent's store, ...), over torch's own
elastic rendezvous (``c10d`` or ``static``, which also makes the store: it lives in the agent of
node 0, never in a worker). When a worker dies it restarts that one alone, with
``DISTCOMM_JOIN=1``, while ``--max-restarts`` allows; the others go on. In the workers,
:class:`~distcomm.Resilient` shrinks past the dead one and, at a later step, takes its
replacement back in (:mod:`distcomm.wire.rejoin`).

The agent ends when all its workers have ended: with status 0 when each seat's last worker
exited with 0, else 1. A worker that exits with 0 marks the job finished in the store, so a
replacement still waiting to be admitted ends instead of waiting (with
:data:`~distcomm.wire.rejoin.NOT_ADMITTED_STATUS`: its seat counts as failed).

Tested by tests/launch/test_agent.py (one agent of 4 workers, and two agents of 2).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from typing import Any

import attrs

from distcomm.launch.worker import Worker
from distcomm.wire.rejoin import JOIN_VARIABLE, LAUNCHER_VARIABLE, NOT_ADMITTED_STATUS, JobStore, store_client

logger = logging.getLogger(__name__)

RDZV_BACKENDS = ("c10d", "static")
RESTART_VARIABLE = "DISTCOMM_RESTART_COUNT"
"""How many times the agent started this worker's seat again before this process (0: the first)."""


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name.replace('_', '-')} must be a positive whole number, got {value!r}")


def _not_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name.replace('_', '-')} must be 0 or more, got {value!r}")


@attrs.frozen
class AgentConfig:
    """What ``python -m distcomm run`` was asked to do (the names of torchrun's options)."""

    target: tuple[str, ...] = attrs.field(converter=tuple)
    """The script and its arguments, or ``-m module ...``."""
    nproc_per_node: int = attrs.field(default=1, validator=_positive)
    nnodes: int = attrs.field(default=1, validator=_positive)
    node_rank: int | None = None
    """This node's rank, for the ``static`` rendezvous (``c10d`` assigns it)."""
    rdzv_backend: str = attrs.field(default="c10d", validator=attrs.validators.in_(RDZV_BACKENDS))
    rdzv_endpoint: str = ""
    """``host:port`` of the rendezvous; empty: this machine alone, on a free port (``--standalone``)."""
    rdzv_id: str = ""
    local_addr: str | None = None
    """This node's address as the other nodes' agents and workers reach it (default: its host name)."""
    max_restarts: int = attrs.field(default=3, validator=_not_negative)
    """How many times each worker is started again after it died."""
    monitor_interval: float = 0.1
    rdzv_timeout: float = 300.0
    warm_start: bool = False
    """Start workers forked from a server that has imported torch (:mod:`distcomm.launch.warm_start`)."""

    def __attrs_post_init__(self) -> None:
        if not self.target:
            raise ValueError("name the training script to run (or -m module)")
        if self.rdzv_backend == "static" and (not self.rdzv_endpoint or (self.nnodes > 1 and self.node_rank is None)):
            raise ValueError("the static rendezvous needs --rdzv-endpoint HOST:PORT (where node 0's agent keeps the store) and, over several nodes, --node-rank")
        if self.node_rank is not None and not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"--node-rank must be in 0..{self.nnodes - 1}, got {self.node_rank}")


class Agent:
    """Rendezvous with the other nodes' agents, start this node's workers, restart any that dies."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.workers: list[Worker] = []
        self._handler: Any = None
        self._job: JobStore | None = None

    def run(self) -> int:
        """Run the job to its end; 0 when every seat's last worker exited with 0, else 1."""
        config = self.config
        info = self._rendezvous()
        node_rank, nnodes = info.rank, info.world_size
        address, port = info.bootstrap_store_info.master_addr, info.bootstrap_store_info.master_port
        self._job = JobStore(store_client(address, port), seat=-1)
        world_size = nnodes * config.nproc_per_node
        logger.info(
            "distcomm run: node %d of %d, workers %d..%d of %d, store at %s:%d (kept by the agent of node 0)",
            node_rank, nnodes, node_rank * config.nproc_per_node, (node_rank + 1) * config.nproc_per_node - 1, world_size, address, port,
        )  # fmt: skip
        base = self._environment(address, port, node_rank, nnodes, world_size)
        self.workers = [Worker(node_rank * config.nproc_per_node + i, i, config.target, config.warm_start) for i in range(config.nproc_per_node)]
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            previous = {s: signal.signal(s, _raise_exit) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for worker in self.workers:
                worker.start(self._worker_environment(base, worker, joining=False))
            status = self._monitor(base)
            self._job.leave(node_rank == 0, nnodes, self.config.rdzv_timeout)
            return status
        finally:
            for worker in self.workers:
                worker.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._handler is not None:
                self._handler.shutdown()

    def _monitor(self, base: dict[str, str]) -> int:
        running = set(range(len(self.workers)))
        while running:
            time.sleep(self.config.monitor_interval)
            for index in sorted(running):
                worker = self.workers[index]
                code = worker.poll()
                if code is None:
                    continue
                if code == NOT_ADMITTED_STATUS and worker.restarts:  # the job finished without it: the seat failed
                    running.discard(index)
                    logger.warning("distcomm run: worker %d's replacement was not admitted before the job finished", worker.seat)
                elif code == 0:
                    running.discard(index)
                    self._job.finish()  # type: ignore[union-attr]
                    logger.info("distcomm run: worker %d finished", worker.seat)
                elif worker.restarts < self.config.max_restarts:
                    worker.restarts += 1
                    logger.warning(
                        "distcomm run: worker %d ended with %s; starting it again (restart %d of %d) to join the live job",
                        worker.seat, _status(code), worker.restarts, self.config.max_restarts,
                    )  # fmt: skip
                    worker.start(self._worker_environment(base, worker, joining=True))
                else:
                    running.discard(index)
                    logger.error("distcomm run: worker %d ended with %s and has no restarts left", worker.seat, _status(code))
        failed = [w for w in self.workers if w.exit_code != 0]
        if failed:
            logger.error("distcomm run: worker(s) %s ended with an error", [w.seat for w in failed])
            return 1
        return 0

    def _rendezvous(self) -> Any:
        """The nodes' rendezvous, through torch's elastic handler: this node's rank, and the store."""
        from torch.distributed.elastic.rendezvous import RendezvousParameters
        from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

        config = self.config
        endpoint = config.rdzv_endpoint or "localhost:0"
        extra: dict[str, Any] = {"join_timeout": config.rdzv_timeout}
        if config.rdzv_backend == "static":
            extra = {"rank": config.node_rank or 0, "timeout": int(config.rdzv_timeout)}
        params = RendezvousParameters(
            backend=config.rdzv_backend, endpoint=endpoint, run_id=config.rdzv_id or uuid.uuid4().hex[:12],
            min_nodes=config.nnodes, max_nodes=config.nnodes, local_addr=config.local_addr, **extra,
        )  # fmt: skip
        self._handler = get_rendezvous_handler(params)
        return self._handler.next_rendezvous()

    def _environment(self, address: str, port: int, node_rank: int, nnodes: int, world_size: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "MASTER_ADDR": address, "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size), "GROUP_RANK": str(node_rank),
            "GROUP_WORLD_SIZE": str(nnodes), "LOCAL_WORLD_SIZE": str(self.config.nproc_per_node),
            "ROLE_NAME": "default", "ROLE_WORLD_SIZE": str(world_size), "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": str(self.config.max_restarts), "TORCHELASTIC_RUN_ID": self._handler.get_run_id(),
            "TORCHELASTIC_USE_AGENT_STORE": "True", LAUNCHER_VARIABLE: "distcomm",
        })  # fmt: skip
        if self.config.nproc_per_node > 1:
            env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does: workers share the node's cores
        env.pop(JOIN_VARIABLE, None)
        return env

    @staticmethod
    def _worker_environment(base: dict[str, str], worker: Worker, joining: bool) -> dict[str, str]:
        env = dict(base)
        env.update({"RANK": str(worker.seat), "LOCAL_RANK": str(worker.local_rank), "ROLE_RANK": str(worker.seat)})
        if joining:
            env[JOIN_VARIABLE] = "1"
        env[RESTART_VARIABLE] = str(worker.restarts)
        return env


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
