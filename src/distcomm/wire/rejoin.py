"""Letting a replacement process join a live job, through the job's store.

Under ``python -m distcomm run`` (:mod:`distcomm.launch.agent`) the agent keeps the job's store
and starts a worker that died again, with ``DISTCOMM_JOIN=1``. That process does not enter the
job's first world (its ranks have moved on); it asks to join, and the live ranks take it in at
their next step boundary. Keys live under ``distcomm/job/`` in the agent's store:

1. **A newcomer asks**: ``i = add("join/count", 1)``, then ``join/request/<i>`` = its seat (the
   rank it was launched as: a replacement has the seat of the worker it replaces).
2. **The live ranks agree to admit** (:meth:`JobStore.pending`, then the largest count any of
   them read, one small all-reduce): all see the same number ``P``. When it is above the
   requests admitted so far, they write the next world once, with ``compare_set``, under
   ``admission/<P>`` (every live rank proposes the same: the live seats and the new ones,
   sorted) and tell each newcomer with ``join/admitted/<i>`` = ``P``.
3. **Every member forms the new world** (:func:`form_world`): they meet as survivors of a shrink
   do (:func:`~distcomm.wire.survivors.decide_survivors`: one membership for everyone, a member
   that does not come within the window is left out) and make a new default process group over
   a prefix of the store of their own. The world is used once every member said it formed it
   (:func:`~distcomm.wire.survivors.confirm_formed`); otherwise they agree again without the
   missing ones. So a replacement that dies while joining, or a live rank that dies meanwhile,
   costs one more attempt, never a split.
4. **Ranks follow seats**: the members are numbered in seat order, so a job that got every seat
   back has its original ranks (and data split). The first member that was live before is the
   source of the training state (:class:`~distcomm.Resilient` broadcasts it from there).

Tested over a real TCP store in tests/wire/test_rejoin.py, and end to end under the launcher in
tests/launch/test_agent.py.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from distcomm.errors import CollectiveError, ConfigurationError, WireFormatError
from distcomm.wire.survivors import MAX_GENERATIONS, POLL_SECONDS, confirm_formed, decide_survivors

if TYPE_CHECKING:
    from distcomm.backends.backend import Backend

logger = logging.getLogger(__name__)

LAUNCHER_VARIABLE = "DISTCOMM_LAUNCHER"
"""Set to ``distcomm`` by :mod:`distcomm.launch.agent` in every worker: its agent restarts dead
workers and keeps the store, so live ranks look for newcomers."""
JOIN_VARIABLE = "DISTCOMM_JOIN"
"""``1`` in a worker the agent started again: it joins the live job instead of starting one."""
JOIN_TIMEOUT_VARIABLE = "DISTCOMM_JOIN_TIMEOUT"
"""Seconds a newcomer waits to be admitted (default :data:`DEFAULT_JOIN_TIMEOUT`)."""
DEFAULT_JOIN_TIMEOUT = 600.0
NOT_ADMITTED_STATUS = 75
"""The exit status of a replacement that found the job finished before it was admitted: its agent
counts the seat as failed (the worker it replaced died), never as finished."""
PREFIX = "distcomm/job/"


@attrs.frozen
class Admission:
    """The world the live ranks agreed to form when they admitted requests up to ``number``."""

    number: int
    members: tuple[int, ...]
    """Every member's seat, sorted: the ranks of the new world in order."""
    joining: tuple[int, ...]
    """The seats of the newcomers (they hold no training state yet)."""


@attrs.frozen
class Growth:
    """What a communicator formed by an admission knows of it: who is new, and where the state is."""

    source: int
    """The rank whose training state the newcomers take (the first that was live before)."""
    newcomers: tuple[int, ...]
    """The ranks (in the new world) of the members that just joined."""
    seats: tuple[int, ...]
    """Every rank's seat: the rank it was launched as."""


class JobStore:
    """The agent's store as seen by one worker of a ``distcomm run`` job, with what this process
    knows of admissions (how many requests were admitted so far: the same on every live rank)."""

    def __init__(self, store: Any, seat: int) -> None:
        self.store = store
        self.seat = seat
        self.admitted = 0
        """How many join requests this job admitted, as far as this process took part."""

    def pending(self) -> int:
        """How many newcomers have asked so far (admitted ones included)."""
        return int(self.store.add(PREFIX + "join/count", 0))

    def request(self) -> int:
        """Ask to join as this process's seat; the request's number."""
        index = int(self.store.add(PREFIX + "join/count", 1))
        self.store.set(f"{PREFIX}join/request/{index}", str(self.seat))
        logger.warning("seat %d asks to join the live job (request %d)", self.seat, index)
        return index

    def admit(self, live_seats: list[int], through: int, timeout: float) -> Admission:
        """The world of ``live_seats`` and the requests after :attr:`admitted` up to ``through``,
        written once for every live rank, each newcomer told; called by every live rank alike."""
        deadline = time.monotonic() + timeout
        joining = []
        for index in range(self.admitted + 1, through + 1):
            key = f"{PREFIX}join/request/{index}"
            while not self.store.check([key]):  # counted before written: written at once after
                if time.monotonic() > deadline:
                    raise CollectiveError("admit", self.seat, f"join request {index} was counted but never written")
                time.sleep(POLL_SECONDS)
            joining.append(int(self.store.get(key)))
        joining = sorted(set(joining) - set(live_seats))  # a seat asks again after its last try died
        members = sorted(set(live_seats) | set(joining))
        proposal = json.dumps({"members": members, "joining": joining})
        decided = self.store.compare_set(f"{PREFIX}admission/{through}", "", proposal)
        for index in range(self.admitted + 1, through + 1):
            self.store.set(f"{PREFIX}join/admitted/{index}", str(through))
        self.admitted = through
        return _parse(decided, through)

    def wait_admission(self, index: int, timeout: float) -> Admission | None:
        """The admission that took request ``index`` in; ``None`` when the job finished first.
        Raises :class:`~distcomm.ConfigurationError` when nobody admits it within ``timeout``."""
        deadline = time.monotonic() + timeout
        key = f"{PREFIX}join/admitted/{index}"
        while not self.store.check([key]):
            if self.store.check([PREFIX + "finished"]):
                return None
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"seat {self.seat} asked to join the live job and no live rank admitted it within {timeout:g} s: "
                    "live ranks admit newcomers at each step of Resilient.run (or when they call comm.admit())"
                )
            time.sleep(POLL_SECONDS)
        through = int(self.store.get(key))
        self.admitted = through
        return _parse(self.store.get(f"{PREFIX}admission/{through}"), through)

    def leave(self, keeps_store: bool, agents: int, timeout: float) -> None:
        """An agent's last word: it is done. The agent that keeps the store waits (up to
        ``timeout`` seconds) until all ``agents`` are, so no other node's workers lose the store."""
        try:
            done = int(self.store.add(PREFIX + "agents-done", 1))
            deadline = time.monotonic() + timeout
            while keeps_store and done < agents and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS * 5)
                done = int(self.store.add(PREFIX + "agents-done", 0))
        except (RuntimeError, OSError, TimeoutError) as error:  # the store's agent went first
            logger.debug("could not say that this agent is done (%s)", error)

    def finish(self) -> None:
        """Say that the job's work is done: newcomers still waiting end instead of joining."""
        try:
            self.store.set(PREFIX + "finished", "1")
        except (RuntimeError, OSError, TimeoutError) as error:  # the agent went first
            logger.debug("could not mark the job finished (%s)", error)


def form_world(
    job: JobStore,
    admission: Admission,
    make: Callable[[Any, int, int], Backend],
    timeout: datetime.timedelta,
    settle: float,
) -> tuple[Backend, Growth]:
    """Form the world ``admission`` agreed on, with this process's seat in it: ``make(store,
    rank, world_size)`` builds its group. Members that do not come, or fail to form it, are left
    out on the next attempt; every member ends with the same world (see the module)."""
    intended = list(admission.members)
    key = f"{PREFIX}world/{admission.number}"
    problem: BaseException | None = None
    for attempt in range(MAX_GENERATIONS):
        if job.seat not in intended:
            break
        membership = decide_survivors(
            job.store, key, attempt, intended.index(job.seat), len(intended), window=timeout.total_seconds() + settle
        )
        members = [intended[i] for i in membership.survivors]
        live = [seat for seat in members if seat not in admission.joining]
        if not live:
            raise CollectiveError("admit", job.seat, f"every rank that held the job's state was lost while seats {admission.joining} joined")
        try:
            backend = make(_prefixed(job.store, f"{key}/{attempt}/"), members.index(job.seat), len(members))
        except (CollectiveError, RuntimeError) as error:  # a member died meanwhile: agree again without it
            problem, intended = error, members
            logger.warning("admit: the world %s of attempt %d could not form (%s); agreeing again", members, attempt, error)
            continue
        if not confirm_formed(job.store, key, attempt, len(members), timeout.total_seconds()):
            backend.close()
            problem, intended = CollectiveError("admit", job.seat, "not every member formed the world"), members
            logger.warning("admit: not every member of %s formed the world of attempt %d; agreeing again", members, attempt)
            continue
        joined = [seat for seat in members if seat in admission.joining]
        growth = Growth(
            source=members.index(live[0]),
            newcomers=tuple(members.index(seat) for seat in joined),
            seats=tuple(members),
        )
        logger.warning("admit: seat %d goes on as rank %d of %d (joined: seats %s)", job.seat, members.index(job.seat), len(members), joined)
        return backend, growth
    raise CollectiveError("admit", job.seat, f"no world formed in {MAX_GENERATIONS} attempts: {problem}")


def world_name(group_name: str, number: int) -> str:
    """The name a grown world's communicator goes by (its flight records are numbered apart from
    the world before: the newcomers' count starts there, the live ranks' would go on)."""
    return f"{group_name} (world {number})"


def _prefixed(store: Any, prefix: str) -> Any:
    import torch.distributed as dist

    return dist.PrefixStore(prefix, store)  # type: ignore[attr-defined]


def _parse(value: bytes | str, number: int) -> Admission:
    try:
        data = json.loads(value)
        members = tuple(int(seat) for seat in data["members"])
        joining = tuple(int(seat) for seat in data["joining"])
    except (ValueError, KeyError, TypeError) as error:
        raise WireFormatError(f"the admission in the job's store is malformed: {value!r:.80}") from error
    if list(members) != sorted(set(members)) or not set(joining) <= set(members):
        raise WireFormatError(f"the admission in the job's store is malformed: {value!r:.80}")
    return Admission(number, members, joining)


# ----------------------------------------------------------- the process's job store

_job: JobStore | None = None
_job_lock = threading.Lock()


def launched_by_agent() -> bool:
    """Whether this process is a worker of ``python -m distcomm run``."""
    return os.environ.get(LAUNCHER_VARIABLE) == "distcomm"


def joining() -> bool:
    """Whether this process replaces a worker of a live job (it joins instead of starting one)."""
    return launched_by_agent() and os.environ.get(JOIN_VARIABLE) == "1"


def join_timeout() -> float:
    text = os.environ.get(JOIN_TIMEOUT_VARIABLE, "")
    try:
        return float(text) if text else DEFAULT_JOIN_TIMEOUT
    except ValueError:
        raise ConfigurationError(f"{JOIN_TIMEOUT_VARIABLE}={text!r} is not a number of seconds") from None


def job_store() -> JobStore | None:
    """The job's store where this process is a worker of ``python -m distcomm run`` (the agent's,
    at ``MASTER_ADDR:MASTER_PORT``), else ``None``: other launchers never admit newcomers."""
    global _job
    if not launched_by_agent():
        return None
    if _job is not None:  # every step of a Resilient loop asks
        return _job
    with _job_lock:
        if _job is None:
            address, port, seat = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""), os.environ.get("RANK", "")
            if not (address and port.isdigit() and seat.isdigit()):
                raise ConfigurationError(f"{LAUNCHER_VARIABLE}=distcomm is set but MASTER_ADDR, MASTER_PORT or RANK is not: start workers with python -m distcomm run")
            _job = JobStore(store_client(address, int(port)), int(seat))
        return _job


def store_client(address: str, port: int) -> Any:
    """A client of the agent's TCP store at ``address:port``."""
    import torch.distributed as dist

    return dist.TCPStore(address, port, is_master=False, timeout=datetime.timedelta(seconds=60))  # type: ignore[attr-defined]


def _forget_after_fork() -> None:
    global _job, _job_lock
    _job, _job_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
