"""``CheckedCommunicator``: a communicator whose every collective is checked first (:class:`CheckHook`).

Tested by tests/debug/test_checked.py.
"""

from __future__ import annotations

import datetime

from distcomm.communicator import Communicator
from distcomm.communicator_view import CommunicatorView
from distcomm.instrument.check_hook import CheckHook

__all__ = ["CheckHook", "CheckedCommunicator"]


class CheckedCommunicator(CommunicatorView):
    """``inner`` with a :class:`CheckHook`: before each collective, all ranks must make the same call.

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
        if not isinstance(inner, Communicator):
            raise TypeError(f"CheckedCommunicator wraps a Communicator, got {type(inner).__name__}")
        existing = next((hook for hook in inner.hooks if isinstance(hook, CheckHook)), None)  # DISTCOMM_DEBUG=1 attached one
        if existing is not None and timeout is None:
            super().__init__(inner)  # check once, with the hook inner has
        else:
            super().__init__(inner, CheckHook(inner, timeout))

    @property
    def check(self) -> CheckHook:
        """The hook that checks every call (its own, or the one ``inner`` had already)."""
        return next(hook for hook in reversed(self.hooks) if isinstance(hook, CheckHook))

    @property
    def timeout(self) -> datetime.timedelta:
        """How long a rank waits for the others' fingerprints."""
        return self.check.timeout
