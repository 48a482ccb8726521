"""Training loops that survive a lost rank: :class:`Resilient` runs each step, and when a
collective fails because a rank died, the survivors shrink to a communicator of their own
(:meth:`~distcomm.Communicator.shrink`), take the training state from the new rank 0 and run
the step again. Three lines in a loop::

    job = Resilient(comm, state={**model.state_dict(), "step": step})
    while step.item() < total_steps:
        job.run(train_step)          # train_step(comm) reads comm.rank and comm.world_size

Under ``python -m distcomm run`` the agent starts a dead worker again, and at the next step the
live ranks take it back in (:meth:`~distcomm.Communicator.admit`): the replacement's own
``Resilient(comm, state)`` receives the state from a live rank, and the job is whole again.

A step that picks its data by ``comm.rank`` and ``comm.world_size`` re-splits the data by
itself. The state is a dict of tensors filled in place on every survivor (the model's
``state_dict()`` holds its parameters themselves; add the optimizer's tensors and a step
counter). What it does not do, and what a dead store host means: docs/resilience.md.

Tested by tests/test_resilience.py, tests/launch/test_agent.py and examples/resilient_training.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch

from distcomm.communicator import Communicator
from distcomm.errors import CollectiveError, CollectiveMismatchError, ExcludedRankError, InvalidArgumentError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Resilient:
    """Runs training steps over a communicator that shrinks when ranks die (see the module)."""

    def __init__(
        self,
        comm: Communicator,
        state: Mapping[str, torch.Tensor],
        *,
        settle: float = 1.0,
        on_shrink: Callable[[Communicator], None] | None = None,
        on_grow: Callable[[Communicator], None] | None = None,
    ) -> None:
        if not isinstance(comm, Communicator):
            raise InvalidArgumentError(f"Resilient runs over a distcomm Communicator, got {type(comm).__name__}")
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InvalidArgumentError("Resilient keeps the training state as a dict of tensors (filled in place on a shrink)")
        self._comm = comm
        self.state = state
        self.settle = settle
        self.on_shrink = on_shrink
        self.on_grow = on_grow
        self.lost: list[int] = []
        """Every rank lost so far, numbered as in the communicator the job started with (its seat)."""
        self.joined: list[int] = []
        """Every seat a replacement took back so far (``python -m distcomm run``)."""
        growth = comm.growth
        self._seats = list(growth.seats) if growth is not None else list(range(comm.world_size))
        """The seat of each rank of :attr:`comm`: the rank it was launched as."""
        self._left = False
        self._has_state = growth is None or comm.rank not in growth.newcomers
        self._admitted_now = growth is not None  # the live ranks took this world in at their step boundary
        if not self._has_state:  # a replacement: take the state from a live rank, as the live ranks send it
            assert growth is not None
            try:
                self._take_state(comm, growth.source)
            except CollectiveError as error:
                if self._comm.closed or not self._recover(error):  # closed: no world formed when newcomers joined
                    raise

    @property
    def comm(self) -> Communicator:
        """The communicator of the ranks alive now."""
        return self._comm

    def run(self, step: Callable[[Communicator], T]) -> T:
        """``step(comm)``, after taking in any replacement that asked to join (under ``python -m
        distcomm run``); after a failed collective, shrink, restore the state from the first
        survivor that holds it, and run it again on the survivors.

        The step runs again only when a rank was lost: when every rank came to the shrink (a
        collective timed out, yet nobody died) the error is raised on every rank, over the
        shrunk communicator (:attr:`comm`), as is a
        :class:`~distcomm.CollectiveMismatchError` (ranks in different calls: a bug that
        running again would repeat). A rank left out raises
        :class:`~distcomm.errors.ExcludedRankError`. Any other error of the step passes
        through, and this rank, alive, says so in the job's store first: ranks whose
        collectives then time out learn in the shrink that it did not die, and raise a
        :class:`~distcomm.CollectiveError` naming it instead of going on without it.
        """
        if self._left:  # the last step raised here and the caller went on: this rank stays
            self._left = False
            self._comm._stay()
        while True:
            try:
                if self._admitted_now:  # every member formed this world at this same boundary
                    self._admitted_now = False
                else:
                    self._admit()
                return step(self._comm)
            except (ExcludedRankError, CollectiveMismatchError):
                raise
            except CollectiveError as error:
                if self._comm.closed or not self._recover(error):  # closed: no world formed when newcomers joined
                    raise
            except Exception as error:  # this rank's own failure: it is alive, so it must not be dropped
                self._left = self._comm._leave(f"{type(error).__name__}: {error}"[:500])
                raise

    def _admit(self) -> None:
        """Take in the replacements that asked to join (only under ``python -m distcomm run``): the
        grown world, in seat order, and the state sent from the first rank that held it."""
        grown = self._comm.admit(self.settle)
        if grown is self._comm:
            return
        self._comm = grown
        growth = grown.growth
        assert growth is not None
        self.lost += [seat for seat in self._seats if seat not in growth.seats]  # died while the world formed
        self._seats = list(growth.seats)
        self.joined += [growth.seats[r] for r in growth.newcomers]
        self._take_state(grown, growth.source)
        if self.on_grow is not None:
            self.on_grow(grown)

    def _take_state(self, comm: Communicator, source: int) -> None:
        """Every rank takes ``source``'s state, in place."""
        comm.broadcast(dict(self.state), src=source)
        self._has_state = True

    def _recover(self, error: CollectiveError) -> bool:
        """Shrink to the survivors; whether a rank was lost (the same answer on every survivor)."""
        logger.warning("rank %d of %d: %s; shrinking to the survivors", self._comm.rank, self._comm.world_size, error)
        before = self._comm
        survivors = before.shrink(self.settle)
        self._comm = survivors
        self._admitted_now = False  # every survivor goes on from a step boundary of its own: admit, then step
        if survivors.world_size == before.world_size:
            return False
        kept = survivors.all_gather_object((before.rank, self._has_state))  # before the shrink: rank, holds the state
        ranks = [rank for rank, _ in kept]
        self.lost += [self._seats[r] for r in range(before.world_size) if r not in ranks]
        self._seats = [self._seats[r] for r in ranks]
        holders = [new for new, (_, holds) in enumerate(kept) if holds]
        if not holders:  # only replacements that had not yet taken the state survived
            raise CollectiveError("shrink", survivors.rank, "no survivor holds the training state: every rank that held it was lost")
        self._take_state(survivors, holders[0])  # the first survivor that holds the state
        if self.on_shrink is not None:
            self.on_shrink(survivors)
        return True
