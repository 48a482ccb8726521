"""``LocalWorld`` and :func:`spawn`: run a function on N local ranks, each a real process in a real
process group, and get every rank's value back (or every failed rank's error and traceback).

``distcomm.spawn(train, world_size=4)`` is the one-call form; a ``LocalWorld`` keeps its ranks
alive between calls (:class:`distcomm.testing.World` is one for tests).

Starting processes and importing torch is the slow part of a multi-rank test, so a
``World`` starts its ranks once and then serves many calls. Ranks meet through a file
rendezvous in a private temporary directory (no TCP port to collide on when
pytest-xdist runs workers in parallel), collectives have a short timeout, and a call
that does not finish in time has its ranks killed and reported, with their stacks.
After any failure other than a clean :class:`~distcomm.InvalidArgumentError` on every
rank, the world is restarted before the next call, so one bad test cannot poison the
next.
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, cast

import attrs

from distcomm.errors import CollectiveMismatchError, InvalidArgumentError, RankDiedError, RankFailure, RankTimeoutError

logger = logging.getLogger(__name__)

_READY = "ready"


@attrs.frozen
class RankOutcome:
    """What one rank's call ended with: a value, or an exception and its traceback."""

    rank: int
    value: Any = None
    error: BaseException | None = None
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Any:
        """The value, or the rank's exception raised here."""
        if self.error is not None:
            raise self.error
        return self.value


def _serve(rank: int, world_size: int, backend: str, init_method: str, timeout: float, workdir: str, conn: Connection) -> None:
    """The body of one rank process: join the group, then run calls until told to stop."""
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1"}
    )
    # Flight records of a failed call land in the world's private directory, not the caller's.
    os.environ.setdefault("DISTCOMM_FLIGHT_RECORDER_DIR", os.path.join(workdir, "flight-records"))
    stack_file = open(os.path.join(workdir, f"stack-{rank}.txt"), "w")  # noqa: SIM115 (lives with the process)
    faulthandler.register(signal.SIGUSR2, file=stack_file, all_threads=True)  # SIGUSR1 dumps the flight record
    import torch

    from distcomm.launch.active import instrument, set_communicator
    from distcomm.torch_dist import TorchDistCommunicator

    torch.set_num_threads(1)
    comm = TorchDistCommunicator.init(backend, rank=rank, world_size=world_size, init_method=init_method, timeout=timeout)
    conn.send(_READY)
    while True:
        message = conn.recv()
        if message is None:
            break
        call_id, path, payload = message
        for entry in reversed(path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        codec = comm.object_codec
        try:
            try:
                fn, args, kwargs = pickle.loads(payload)
            except (AttributeError, ImportError, pickle.UnpicklingError) as error:
                raise InvalidArgumentError(
                    f"rank {rank} could not load the function to run ({error}): it must be importable by the "
                    "rank processes, defined at module level in a file (not in `python -`, a notebook cell or "
                    "another function)"
                ) from error
            # With the hooks the environment asks for (DISTCOMM_DEBUG, DISTCOMM_PROFILE), as everywhere.
            reply: tuple[Any, ...] = (call_id, True, fn(instrument(comm), *args, **kwargs), "")
        except BaseException as error:  # noqa: BLE001 (every failure goes back to the caller)
            reply = (call_id, False, error, traceback.format_exc())
        set_communicator(None)  # leave no state behind for the next call
        if not comm.closed:
            comm.object_codec = codec
        healthy = torch.distributed.is_initialized() and torch.distributed.group.WORLD is comm.group
        try:
            conn.send((*reply, healthy))
        except Exception as error:  # noqa: BLE001 (an unpicklable result or exception)
            conn.send((call_id, False, RuntimeError(f"the result could not be sent back: {error}"), reply[3], healthy))
        if not healthy:
            break
    comm.close()


class LocalWorld:
    """``world_size`` real rank processes over a ``backend`` process group (Gloo by default).

    ``run(fn, *args)`` calls ``fn(comm, *args)`` on every rank, where ``comm`` is that
    rank's :class:`~distcomm.TorchDistCommunicator`, and returns the values in rank
    order; a failure raises :class:`~distcomm.errors.RankFailure` with every failed rank's
    error and traceback, a rank that could not start included (the cause, not an exit code).
    As under torchrun, the active communicator (``get_communicator()``, the ``distutils``
    functions) follows the same default group. ``fn`` must be importable: a module-level
    function. ``timeout`` bounds each collective, ``call_timeout`` each call (seconds).
    """

    def __init__(
        self,
        world_size: int,
        *,
        backend: str = "gloo",
        timeout: float = 300.0,
        call_timeout: float = 3600.0,
        start_timeout: float = 120.0,
    ) -> None:
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise InvalidArgumentError(f"world_size must be a positive int, got {world_size!r}")
        self.world_size = world_size
        self.backend = backend
        self.timeout = timeout
        self.call_timeout = call_timeout
        self.start_timeout = start_timeout
        self.starts = 0
        """How many times the ranks were started (a failed call restarts them)."""
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._connections: list[Connection] = []
        self._workdir: str | None = None
        self._generation = itertools.count()
        self._calls = itertools.count()
        self._broken = False

    # ---------------------------------------------------------------- life cycle

    @property
    def running(self) -> bool:
        return bool(self._processes)

    def start(self) -> None:
        """Start the rank processes (``run`` does this when needed)."""
        if self.running:
            return
        context = process_context()
        self.starts += 1
        self._workdir = tempfile.mkdtemp(prefix="distcomm-world-")
        init_method = f"file://{self._workdir}/rendezvous-{next(self._generation)}"
        with _main_without_a_missing_file():
            self._start_ranks(context, init_method)
        outcomes = self._collect(self._connections, None, self.start_timeout)
        if not all(o.ok and o.value == _READY for o in outcomes):
            self._kill()
            raise RankFailure(outcomes)

    def _start_ranks(self, context: Any, init_method: str) -> None:
        for rank in range(self.world_size):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_serve,
                args=(rank, self.world_size, self.backend, init_method, self.timeout, self._workdir, child_end),
                name=f"distcomm-rank-{rank}",
                daemon=True,
            )
            process.start()
            child_end.close()
            self._processes.append(process)
            self._connections.append(parent_end)

    def close(self) -> None:
        """Stop the rank processes and remove the rendezvous directory."""
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process in self._processes:
            process.join(timeout=5)
        self._kill()

    def __enter__(self) -> LocalWorld:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _kill(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.kill()
        for process in self._processes:
            process.join(timeout=5)
        for conn in self._connections:
            conn.close()
        self._processes, self._connections = [], []
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -------------------------------------------------------------------- calls

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> list[Any]:
        """``fn(comm, *args, **kwargs)`` on every rank; the values in rank order.

        Raises :class:`RankFailure` (listing each failed rank's error and traceback)
        when any rank raised, hung past ``timeout`` seconds, or died.
        """
        outcomes = self.run_outcomes(fn, *args, timeout=timeout, **kwargs)
        if not all(o.ok for o in outcomes):
            raise RankFailure(outcomes)
        return [o.value for o in outcomes]

    def run_outcomes(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> list[RankOutcome]:
        """Like :meth:`run`, but return every rank's :class:`RankOutcome` instead of raising."""
        try:
            payload = pickle.dumps((fn, args, kwargs))
        except Exception as error:
            raise InvalidArgumentError(
                f"World.run needs a module-level function and picklable arguments: {error}"
            ) from error
        self.start()
        call_id = next(self._calls)
        for conn in self._connections:
            conn.send((call_id, list(sys.path), payload))
        outcomes = self._collect(self._connections, call_id, timeout if timeout is not None else self.call_timeout)
        if self._broken or not _clean(outcomes):
            logger.debug("restarting the %d-rank world after a failed call", self.world_size)
            self._kill()
        return outcomes

    def _collect(self, connections: list[Connection], call_id: int | None, timeout: float) -> list[RankOutcome]:
        results: dict[int, RankOutcome] = {}
        pending = {conn: rank for rank, conn in enumerate(connections)}
        deadline = time.monotonic() + timeout
        self._broken = False
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for conn in multiprocessing.connection.wait(list(pending), remaining):
                rank = pending.pop(conn)  # type: ignore[call-overload]
                results[rank] = self._receive(cast(Connection, conn), rank, call_id)
        if pending:
            stacks = self._stacks(list(pending.values()))
            for rank in pending.values():
                results[rank] = RankOutcome(
                    rank,
                    error=RankTimeoutError(f"rank {rank} did not finish within {timeout:.1f} s and was killed"),
                    traceback=stacks.get(rank, ""),
                )
        return [results[rank] for rank in range(len(connections))]

    def _receive(self, conn: Connection, rank: int, call_id: int | None) -> RankOutcome:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            process = self._processes[rank]
            process.join(timeout=2)  # the pipe closes a moment before the exit code is known
            code = process.exitcode
            if call_id is None:  # it never started: say what usually stops a rank there
                return RankOutcome(rank, error=RankDiedError(
                    f"rank {rank} exited with code {code} before it was ready: each rank imports your main script, so "
                    'code that starts ranks must run under `if __name__ == "__main__":`; the rank\'s own error is '
                    "on this process's standard error, above"
                ))  # fmt: skip
            return RankOutcome(rank, error=RankDiedError(f"rank {rank} died (exit code {code})"))
        if call_id is None:
            return RankOutcome(rank, value=message)
        _, ok, value, trace, healthy = message
        if not healthy:
            self._broken = True
        return RankOutcome(rank, value=value) if ok else RankOutcome(rank, error=value, traceback=trace)

    def _stacks(self, ranks: list[int]) -> dict[int, str]:
        """Ask hung ranks to write their Python stacks (faulthandler), then read them."""
        for rank in ranks:
            process = self._processes[rank]
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGUSR2)
        time.sleep(0.3)
        stacks = {}
        for rank in ranks:
            try:
                with open(os.path.join(self._workdir or "", f"stack-{rank}.txt")) as handle:
                    stacks[rank] = handle.read()
            except OSError:
                pass
        return stacks


@contextlib.contextmanager
def _main_without_a_missing_file() -> Iterator[None]:
    """While ranks start: hide the main module's file name when there is no such file (``python -``),
    which the new processes would otherwise try to run and die on; a function defined there then
    fails to load in the rank, which says so."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or os.path.exists(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _clean(outcomes: list[RankOutcome]) -> bool:
    """Whether the group is certainly still usable after a call: every rank returned, or every rank
    refused the same call before its data moved (a bad or inconsistent argument, or a call that
    :class:`~distcomm.CheckedCommunicator` found to differ between the ranks)."""
    if all(o.ok for o in outcomes):
        return True
    return all(isinstance(o.error, InvalidArgumentError) for o in outcomes) or all(
        isinstance(o.error, CollectiveMismatchError) for o in outcomes
    )


_preloaded = False


def process_context() -> Any:
    """The multiprocessing context that starts ranks: a fork server that has already imported torch
    and distcomm (see :mod:`distcomm.launch.forkserver_preload`), so a new rank starts in
    milliseconds; ``spawn`` where there is no fork server."""
    global _preloaded
    if sys.platform == "win32" or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    if not _preloaded:
        context.set_forkserver_preload(["distcomm.launch.forkserver_preload"])
        _preloaded = True
    return context


def spawn(
    fn: Callable[..., Any],
    *args: Any,
    world_size: int = 2,
    backend: str = "gloo",
    timeout: float = 300.0,
    call_timeout: float | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(comm, *args, **kwargs)`` on ``world_size`` new local ranks and return each rank's value,
    in rank order; the ranks end with the call.

    Each rank is a real process in a real ``backend`` process group (Gloo by default), met through
    a private file rendezvous. A failure on any rank raises :class:`~distcomm.errors.RankFailure`
    naming each failed rank with its error and traceback (a rank that could not start included);
    ``timeout`` bounds each collective, ``call_timeout`` the whole call (default: none). ``fn`` must
    be importable: defined at module level in a file, and the code that calls ``spawn`` runs under
    ``if __name__ == "__main__":``.
    """
    with LocalWorld(world_size, backend=backend, timeout=timeout, call_timeout=call_timeout or 10.0**6) as world:
        return world.run(fn, *args, **kwargs)
