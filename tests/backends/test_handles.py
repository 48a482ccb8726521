"""Handles of collectives that may run in the background."""

from __future__ import annotations

import pytest

from distcomm import CollectiveError
from distcomm.backends.handles import CompletedHandle, ThenHandle, WorkHandle


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


def test_waiting_again_returns_the_same_result_and_does_the_work_once() -> None:
    calls: list[int] = []
    halved = ThenHandle(CompletedHandle(8.0), lambda x: calls.append(1) or x / 2)
    assert [halved.wait(), halved.wait()] == [4.0, 4.0] and calls == [1]

    class Counting(_Work):
        waits = 0

        def wait(self) -> None:
            Counting.waits += 1

    work = WorkHandle(Counting(), "result", "all_reduce", 0)
    assert [work.wait(), work.wait()] == ["result", "result"] and Counting.waits == 1
