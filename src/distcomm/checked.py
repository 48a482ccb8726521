"""``CheckedCommunicator``: turn collective hangs into errors that name the ranks and the calls.

Before each collective, every rank publishes a fingerprint of its call (sequence
number, operation, dtype, shape, reduce op) in the process group's key-value store
and waits for the others'. If they differ, every rank raises
:class:`~distcomm.CollectiveMismatchError` listing each rank's call; if some rank does
not arrive within the timeout, every rank that did raises a
:class:`~distcomm.CollectiveError` naming the missing ranks. ``DISTCOMM_DEBUG=1``
switches it on for the active communicator.

It costs a store round trip per collective: a debugging tool, not for production.
"""

from __future__ import annotations

import datetime
import itertools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from distcomm.communicator import Communicator
from distcomm.errors import CollectiveError, CollectiveMismatchError
from distcomm.wrapper import CommunicatorWrapper

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)
_instances: dict[str, itertools.count[int]] = {}
"""Checked communicators made per group, so each gets its own keys (ranks make them in the same order)."""


def _store_of(comm: Communicator) -> Any:
    """The key-value store every rank of ``comm``'s group can reach, or None (then objects are exchanged)."""
    group = getattr(comm, "group", None)
    if group is None or not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()  # shared by all ranks of every group
    except (AttributeError, RuntimeError, ValueError):
        return None


class CheckedCommunicator(CommunicatorWrapper):
    """Wraps ``inner`` and checks, before each collective, that all ranks make the same call.

    ``timeout`` (seconds or a timedelta) bounds how long a rank waits for the others'
    fingerprints; it defaults to the group's own timeout (five minutes where the group
    has none to read), so a missing rank is named no later than a plain collective
    would have failed.

    The fingerprint covers the whole call: every leaf's key path, kind, dtype and shape
    (a digest beyond the first eight shown), the reduce op, and ``src`` or ``dst``.
    It is stricter than plain mode, which reconciles an ``int`` on one rank with a
    ``float`` on another: checking reports such differences.
    """

    def __init__(self, inner: Communicator, timeout: datetime.timedelta | float | None = None) -> None:
        super().__init__(inner)
        if timeout is None:
            timeout = getattr(inner, "timeout", None) or DEFAULT_TIMEOUT
        self.timeout = timeout if isinstance(timeout, datetime.timedelta) else datetime.timedelta(seconds=timeout)
        self._sequence = itertools.count(1)
        self._store = _store_of(inner)
        group_name = str(getattr(getattr(inner, "group", None), "group_name", "local"))
        instance = next(_instances.setdefault(group_name, itertools.count()))
        self._namespace = f"distcomm-check/{group_name}/{instance}"

    def _wrap_child(self, child: Communicator) -> Communicator:
        return CheckedCommunicator(child, self.timeout)

    def _intercept(self, operation: str, details: str, payload: Any, run: Callable[[], T]) -> T:
        if self.world_size > 1:
            call = f"{operation} {details}".strip()
            self._agree(next(self._sequence), operation, call)
        return run()

    def _agree(self, sequence: int, operation: str, call: str) -> None:
        calls = self._calls_by_store(sequence, operation, call) if self._store else self._calls_by_objects(call)
        if any(c != calls[0] for c in calls):
            listing = "; ".join(f"rank {r}: {c}" for r, c in enumerate(calls))
            raise CollectiveMismatchError(
                operation,
                self.rank,
                f"ranks made different collective calls at call #{sequence}: {listing}",
            )

    def _calls_by_objects(self, call: str) -> list[str]:
        return self.inner.all_gather_objects(call)

    def _calls_by_store(self, sequence: int, operation: str, call: str) -> list[str]:
        store = self._store
        keys = [f"{self._namespace}/{sequence}/{r}" for r in range(self.world_size)]
        store.set(keys[self.rank], call)
        try:
            store.wait(keys, self.timeout)
        except RuntimeError as error:
            missing = [r for r, key in enumerate(keys) if not store.check([key])]
            if not missing:
                raise CollectiveError(operation, self.rank, error) from error
            raise CollectiveError(
                operation,
                self.rank,
                f"rank(s) {', '.join(map(str, missing))} did not reach call #{sequence} ({call}) within "
                f"{self.timeout.total_seconds():g} s: they died, hang elsewhere, or skipped this collective",
            ) from error
        calls = [value.decode() for value in store.multi_get(keys)]
        if sequence > 2:  # every rank has read call sequence-2 by now (they all wrote sequence-1)
            store.delete_key(f"{self._namespace}/{sequence - 2}/{self.rank}")
        return calls
