"""Surviving a lost rank: :meth:`Shrinking.shrink` gives the ranks still alive a communicator of
their own, so a job goes on with fewer ranks instead of ending.

The survivors agree on who they are through the job's key-value store
(:mod:`distcomm.wire.survivors`), never through the broken group, then make a group of their
own on a new name: on every backend that can make groups without the broken one (Gloo,
NCCL and MPI through torch's group-local synchronization). Ranks are renumbered densely in
the old order. When a survivor dies during the agreement, the group cannot form; the rest
agree again, on the next generation, without it. A group is used only once every member
said it formed it (one that timed out just as the others finished would otherwise be left
in a group of its own). The old communicator is closed on every
survivor (using it raises :class:`~distcomm.ClosedCommunicatorError`); a rank that was
left out raises :class:`~distcomm.errors.ExcludedRankError` and never rejoins.

Tested with real ranks killed with SIGKILL and stopped with SIGSTOP: tests/test_shrinking.py.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import TYPE_CHECKING, Any

from distcomm.collective_base import CollectiveBase
from distcomm.errors import CollectiveError, ExcludedRankError, InvalidArgumentError
from distcomm.instrument.hooks import collective
from distcomm.values.timeouts import as_timeout
from distcomm.wire.survivors import agree_on_survivors, confirm_formed, leave, stay

if TYPE_CHECKING:
    from distcomm.backends.backend import Backend
    from distcomm.wire.context import SharedState

logger = logging.getLogger(__name__)

DEFAULT_SETTLE_SECONDS = 1.0
"""How long survivors wait, beyond the timeout, for the last of them (its collective may have
timed out a timeout after another saw the dead rank's connection close)."""
FALLBACK_TIMEOUT = datetime.timedelta(minutes=5)
"""The bound on making the survivors' group where the communicator's own timeout is not known."""
MAX_GENERATIONS = 8
"""How many times survivors agree again when one of them dies while they do."""


class Shrinking(CollectiveBase):
    """``shrink()``: a communicator over the ranks still alive."""

    group_name: str
    _state: SharedState

    @property
    def timeout(self) -> datetime.timedelta | None:
        raise NotImplementedError

    def _child(self, backend: Backend) -> Any:
        raise NotImplementedError

    @collective(None, every_rank=False)
    def shrink(self, settle: float = DEFAULT_SETTLE_SECONDS) -> Any:
        """A communicator over the ranks that call ``shrink`` (after a
        :class:`~distcomm.CollectiveError`, or any time), renumbered 0.. in the old order.

        Ranks that have not arrived by the group's timeout plus ``settle`` seconds after the
        first survivor did are left out (all arriving ends the wait at once). A rank killed
        outright closes its connections, so the first survivor arrives at once and the new
        communicator is ready about a timeout plus ``settle`` after the death. Every survivor
        gets the same membership: a rank left out gets
        :class:`~distcomm.errors.ExcludedRankError`. This communicator is closed afterwards.
        """
        if isinstance(settle, bool) or not isinstance(settle, (int, float)) or not settle > 0:
            raise InvalidArgumentError(f"shrink: settle is a positive number of seconds, got {settle!r}")
        timeout = self.timeout or FALLBACK_TIMEOUT
        store = self._backend.store
        if store is None and self.world_size > 1:
            raise InvalidArgumentError(f"shrink: the {self._backend.name} backend has no key-value store to agree through")
        started = time.monotonic()
        key = f"distcomm/shrink/{self.group_name}"
        problem: BaseException | None = None
        for _ in range(MAX_GENERATIONS):
            generation = self._state.generations  # shared with views: a generation is never used twice
            self._state.generations += 1
            if self.world_size == 1:
                survivors, notes = [0], [""]
            else:
                membership = agree_on_survivors(
                    store, key, generation, self.rank, self.world_size,
                    window=as_timeout(timeout).total_seconds() + float(settle),
                    note=str(self._backend.group_count()),
                )  # fmt: skip
                survivors, notes = list(membership.survivors), list(membership.notes)
                if membership.failed:  # alive, so not to be dropped: the job stops on every rank
                    listing = "; ".join(f"rank {r}: {why}" for r, why in membership.failed)
                    raise CollectiveError(
                        "shrink", self.rank,
                        f"rank(s) {', '.join(str(r) for r, _ in membership.failed)} are alive but their own step raised "
                        f"({listing}); they are not dropped: the job stops on every rank",
                    )  # fmt: skip
            try:
                backend = self._backend.survivors(survivors, notes, timeout)
            except (CollectiveError, RuntimeError) as error:  # a survivor died meanwhile: agree again without it
                if isinstance(error, ExcludedRankError):
                    raise
                problem = error
                logger.warning("shrink: the survivors %s of generation %d could not form a group (%s); agreeing again", survivors, generation, error)
                continue
            if self.world_size > 1 and not confirm_formed(store, key, generation, len(survivors), as_timeout(timeout).total_seconds()):
                backend.close()
                problem = CollectiveError("shrink", self.rank, f"not every survivor of generation {generation} formed the group")
                logger.warning("shrink: not every survivor %s of generation %d formed the group; agreeing again", survivors, generation)
                continue
            lost = sorted(set(range(self.world_size)) - set(survivors))
            logger.warning(
                "shrink: rank %d of %d goes on as rank %d of %d; lost rank(s) %s (%.2f s)",
                self.rank, self.world_size, survivors.index(self.rank), len(survivors), lost, time.monotonic() - started,
            )  # fmt: skip
            child = self._child(backend)
            self._state.closed = True  # the broken group is never used again; its resources stay with it
            return child
        raise CollectiveError("shrink", self.rank, f"no group of survivors formed in {MAX_GENERATIONS} attempts: {problem}")

    def _leave(self, reason: str) -> bool:
        """Say in the job's store that this rank is alive but leaves with ``reason`` (its own step
        raised), so that ranks which shrink meanwhile stop instead of dropping it; whether it was said."""
        store = self._backend.store
        if store is None or self.world_size == 1:
            return False
        try:
            leave(store, f"distcomm/shrink/{self.group_name}", self._state.generations, self.rank, reason)
        except (RuntimeError, OSError, TimeoutError) as error:
            logger.warning("rank %d could not tell the others it leaves (%s)", self.rank, error)
            return False
        return True

    def _stay(self) -> None:
        """Take back :meth:`_leave`: this rank went on after all."""
        store = self._backend.store
        try:
            stay(store, f"distcomm/shrink/{self.group_name}", self._state.generations, self.rank)
        except (RuntimeError, OSError, TimeoutError) as error:
            logger.warning("rank %d could not take back that it left (%s)", self.rank, error)
