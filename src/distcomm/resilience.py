"""Training loops that survive a lost rank: :class:`Resilient` runs each step, and when a
collective fails because a rank died, the survivors shrink to a communicator of their own
(:meth:`~distcomm.Communicator.shrink`), take the training state from the new rank 0 and run
the step again. Three lines in a loop::

    job = Resilient(comm, state={**model.state_dict(), "step": step})
    while step.item() < total_steps:
        job.run(train_step)          # train_step(comm) reads comm.rank and comm.world_size

A step that picks its data by ``comm.rank`` and ``comm.world_size`` re-splits the data by
itself. The state is a dict of tensors filled in place on every survivor (the model's
``state_dict()`` holds its parameters themselves; add the optimizer's tensors and a step
counter). What it does not do, and what a dead store host means: docs/resilience.md.

Tested by tests/test_resilience.py and examples/resilient_training.py.
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
    ) -> None:
        if not isinstance(comm, Communicator):
            raise InvalidArgumentError(f"Resilient runs over a distcomm Communicator, got {type(comm).__name__}")
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InvalidArgumentError("Resilient keeps the training state as a dict of tensors (filled in place on a shrink)")
        self._comm = comm
        self.state = state
        self.settle = settle
        self.on_shrink = on_shrink
        self.lost: list[int] = []
        """Every rank lost so far, numbered as in the communicator the job started with."""
        self._original = list(range(comm.world_size))
        self._left = False

    @property
    def comm(self) -> Communicator:
        """The communicator of the ranks alive now."""
        return self._comm

    def run(self, step: Callable[[Communicator], T]) -> T:
        """``step(comm)``; after a failed collective, shrink, restore the state from the new
        rank 0, and run it again on the survivors.

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
                return step(self._comm)
            except (ExcludedRankError, CollectiveMismatchError):
                raise
            except CollectiveError as error:
                if not self._recover(error):
                    raise
            except Exception as error:  # this rank's own failure: it is alive, so it must not be dropped
                self._left = self._comm._leave(f"{type(error).__name__}: {error}"[:500])
                raise

    def _recover(self, error: CollectiveError) -> bool:
        """Shrink to the survivors; whether a rank was lost (the same answer on every survivor)."""
        logger.warning("rank %d of %d: %s; shrinking to the survivors", self._comm.rank, self._comm.world_size, error)
        before = self._comm
        survivors = before.shrink(self.settle)
        self._comm = survivors
        if survivors.world_size == before.world_size:
            return False
        kept = survivors.all_gather_object(before.rank)  # the survivors' ranks before the shrink
        self.lost += [self._original[r] for r in range(before.world_size) if r not in kept]
        self._original = [self._original[r] for r in kept]
        survivors.broadcast(dict(self.state), src=0)  # every survivor takes rank 0's state, in place
        if self.on_shrink is not None:
            self.on_shrink(survivors)
        return True

