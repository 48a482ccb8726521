"""Handles of collectives that may run in the background."""

from __future__ import annotations

import pytest

from distcomm import CollectiveError
from distcomm.handles import CompletedHandle, ThenHandle, WorkHandle


class _Work:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error

    def wait(self) -> None:
        if self.error is not None:
            raise self.error

    def is_completed(self) -> bool:
        return True


def test_completed_then_and_work_handles() -> None:
    done = CompletedHandle(3)
    assert done.wait() == 3 and done.is_completed() and not done.asynchronous
    assert ThenHandle(done, lambda x: x * 2).wait() == 6
    assert WorkHandle(_Work(), "result", "all_reduce", 0).wait() == "result"
    with pytest.raises(CollectiveError, match="all_reduce failed on rank 1: RuntimeError: lost"):
        WorkHandle(_Work(RuntimeError("lost")), None, "all_reduce", 1).wait()
