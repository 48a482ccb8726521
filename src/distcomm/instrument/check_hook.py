"""``CheckHook``: turn collective hangs into errors that name the ranks and the calls.

Before each collective, every rank publishes a fingerprint of its call (sequence
number, operation, dtype, shape, reduce op) in the process group's key-value store
and waits for the others'. If they differ, every rank raises
:class:`~distcomm.CollectiveMismatchError` listing each rank's call; if some rank does
not arrive within the timeout, every rank that did raises a
:class:`~distcomm.CollectiveError` naming the missing ranks. ``DISTCOMM_DEBUG=1``
attaches it to every communicator (:mod:`distcomm.instrument.switches`);
:class:`~distcomm.CheckedCommunicator` is a view of one communicator with it.

It costs a store round trip per collective: a debugging tool, not for production.
"""

from __future__ import annotations

import datetime
import itertools
import logging
from typing import Any

import torch.distributed as dist

from distcomm.errors import CollectiveError, CollectiveMismatchError
from distcomm.instrument.hooks import Call, Hook
from distcomm.values.timeouts import as_timeout
from distcomm.wire.objects import all_gather_objects

logger = logging.getLogger(__name__)

FALLBACK_TIMEOUT = datetime.timedelta(minutes=5)
"""How long to wait for the other ranks where the group's own timeout cannot be read."""
_instances: dict[str, itertools.count[int]] = {}
"""Checked communicators made per group, so each gets its own keys (ranks make them in the same order)."""


def _store_of(comm: Any) -> Any:
    """The key-value store every rank of ``comm``'s group can reach, or None (then objects are exchanged)."""
    if comm.group is None or not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()  # shared by all ranks of every group
    except (AttributeError, RuntimeError, ValueError):
        return None


class CheckHook(Hook):
    """Before each collective, checks through the group's store that every rank makes the same call.

    ``comm`` is the communicator it checks (:class:`~distcomm.Communicator`); see
    :class:`~distcomm.CheckedCommunicator`, and ``DISTCOMM_DEBUG=1``, the usual ways to attach it.
    """

    order = 0  # first: a mismatch stops the call before anything else sees it

    def __init__(self, comm: Any, timeout: datetime.timedelta | float | None = None) -> None:
        self.timeout = as_timeout(timeout) if timeout is not None else comm.timeout or FALLBACK_TIMEOUT
        self._comm = comm
        self._sequence = itertools.count(1)
        self._store = _store_of(comm)
        group_name = str(getattr(comm.group, "group_name", "local"))
        instance = next(_instances.setdefault(group_name, itertools.count()))
        self._namespace = f"distcomm-check/{group_name}/{instance}"

    def for_split(self, child: Any) -> Hook:
        return CheckHook(child, self.timeout)

    def before(self, call: Call) -> None:
        if self._comm.world_size > 1 and call.spec.every_rank:  # a send, a receive or a shrink: not every rank
            description = f"{call.operation} {call.details}".strip()
            self._agree(next(self._sequence), call.operation, description)

    def _agree(self, sequence: int, operation: str, call: str) -> None:
        calls = self._calls_by_store(sequence, operation, call) if self._store else self._calls_by_objects(call)
        if any(c != calls[0] for c in calls):
            listing = "; ".join(f"rank {r}: {c}" for r, c in enumerate(calls))
            raise CollectiveMismatchError(
                operation,
                self._comm.rank,
                f"ranks made different collective calls at call #{sequence}: {listing}",
            )

    def _calls_by_objects(self, call: str) -> list[str]:
        return all_gather_objects(self._comm._context, call, "check")

    def _calls_by_store(self, sequence: int, operation: str, call: str) -> list[str]:
        store, rank, world_size = self._store, self._comm.rank, self._comm.world_size
        keys = [f"{self._namespace}/{sequence}/{r}" for r in range(world_size)]
        store.set(keys[rank], call)
        try:
            store.wait(keys, self.timeout)
        except RuntimeError as error:
            missing = [r for r, key in enumerate(keys) if not store.check([key])]
            if not missing:
                raise CollectiveError(operation, rank, error) from error
            raise CollectiveError(
                operation,
                rank,
                f"rank(s) {', '.join(map(str, missing))} did not reach call #{sequence} ({call}) within "
                f"{self.timeout.total_seconds():g} s: they died, hang elsewhere, or skipped this collective",
            ) from error
        calls = [value.decode() for value in store.multi_get(keys)]
        if sequence > 2:  # every rank has read call sequence-2 by now (they all wrote sequence-1)
            store.delete_key(f"{self._namespace}/{sequence - 2}/{rank}")
        return calls
