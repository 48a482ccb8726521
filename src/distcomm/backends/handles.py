"""Handles of asynchronous collectives: what ``*_async`` methods return.

A handle says whether its work really runs in the background (:attr:`Handle.asynchronous`):
where a backend has no asynchronous path for a call (a dtype it must convert, a
communicator without a process group), the work is done before the handle is returned,
and the handle says so rather than pretending.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from distcomm.errors import CollectiveError, DistCommError

_PENDING = object()
"""A result not computed yet."""


class Handle(abc.ABC):
    """An asynchronous collective in flight; :meth:`wait` returns its result (the same one each
    time it is called)."""

    asynchronous: bool = True
    """Whether the work runs in the background; ``False`` when it finished before the handle was returned."""

    @abc.abstractmethod
    def wait(self) -> Any:
        """Block until the collective is done and return its result."""

    @abc.abstractmethod
    def is_completed(self) -> bool:
        """Whether :meth:`wait` would return at once."""


class CompletedHandle(Handle):
    """A handle for work that already finished (where no asynchronous path exists)."""

    asynchronous = False

    def __init__(self, result: Any) -> None:
        self._result = result

    def wait(self) -> Any:
        return self._result

    def is_completed(self) -> bool:
        return True


class WorkHandle(Handle):
    """A torch ``Work`` in flight; its failure becomes a :class:`CollectiveError`."""

    def __init__(self, work: Any, result: Any, step: str, rank: int) -> None:
        self._work = work
        self._result = result
        self._step = step
        self._rank = rank
        self._waited = False

    def wait(self) -> Any:
        if not self._waited:  # once: waiting on a Gloo work again copies its result out again
            try:
                self._work.wait()
            except DistCommError:
                raise
            except RuntimeError as error:
                raise CollectiveError(self._step, self._rank, error) from error
            self._waited = True
        return self._result

    def is_completed(self) -> bool:
        return self._waited or bool(self._work.is_completed())


class ThenHandle(Handle):
    """The handle of ``inner`` with ``then`` applied to its result (keeps its asynchrony)."""

    def __init__(self, inner: Handle, then: Callable[[Any], Any]) -> None:
        self._inner = inner
        self._then = then
        self._result: Any = _PENDING
        self.asynchronous = inner.asynchronous

    def wait(self) -> Any:
        if self._result is _PENDING:  # ``then`` runs once (it may divide in place): later waits return its result
            self._result = self._then(self._inner.wait())
        return self._result

    def is_completed(self) -> bool:
        return self._inner.is_completed()


class JoinedHandle(Handle):
    """Several handles as one: :meth:`wait` waits for each, in order, and returns ``result``."""

    def __init__(self, handles: list[Handle], result: Any = None) -> None:
        self._handles = handles
        self._result = result
        self.asynchronous = any(h.asynchronous for h in handles)

    def wait(self) -> Any:
        for handle in self._handles:
            handle.wait()
        return self._result

    def is_completed(self) -> bool:
        return all(h.is_completed() for h in self._handles)
