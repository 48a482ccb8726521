"""CheckHook on its own: a world of one needs no check, and a split gets a hook of its own."""

from __future__ import annotations

import datetime

from distcomm import LocalCommunicator
from distcomm.instrument.check_hook import FALLBACK_TIMEOUT, CheckHook


def test_a_world_of_one_is_never_checked_and_splits_get_their_own_hook() -> None:
    comm = LocalCommunicator()
    hook = CheckHook(comm, timeout=2)
    comm.register_hook(hook)
    assert comm.all_reduce([1, 2]) == [1, 2]  # no store round trip, no error
    child = hook.for_split(comm.split([0]))
    assert isinstance(child, CheckHook) and child is not hook and child.timeout == datetime.timedelta(seconds=2)
    assert CheckHook(LocalCommunicator()).timeout == FALLBACK_TIMEOUT  # a world of one has no timeout to read
