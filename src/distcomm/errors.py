"""The exceptions distcomm raises, all rooted at :class:`DistCommError`.

Two families matter to callers:

* :class:`InvalidArgumentError` is raised *before* any communication, on the rank
  that got the bad input, so a symmetric program fails on every rank at once instead
  of hanging.
* :class:`CollectiveError` is raised when a collective that was started cannot
  complete (a timeout, a lost peer). It is also a ``RuntimeError`` so that code
  written against raw ``torch.distributed`` keeps catching it.

Two more say when they happen: :class:`ConfigurationError` before a job can start (a
launch setting or a missing environment variable), and :class:`ObjectDecodeError`
after data moved, when a receiver refuses to rebuild a peer's payload.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class DistCommError(Exception):
    """Base class of every error raised by distcomm."""


class InvalidArgumentError(DistCommError, ValueError):
    """Bad input to a collective, found before any communication started."""


class InconsistentInputError(InvalidArgumentError):
    """Ranks passed inputs that cannot be combined (other keys, shapes, dtypes or ops).

    Raised on every rank, with the same message naming the first difference and the
    ranks, after a small agreement step and before any data moved.
    """


class ClosedCommunicatorError(InvalidArgumentError):
    """A collective was called on a communicator after :meth:`~distcomm.Communicator.close`."""


class ConfigurationError(DistCommError, ValueError):
    """A launch configuration or environment that cannot start a job."""


class ObjectDecodeError(DistCommError):
    """A receiver refused to rebuild a peer's payload (it arrived; it was not trusted or not valid).

    Not an :class:`InvalidArgumentError`: the data already moved, and only the
    receiving ranks raise it.
    """


class WireFormatError(ObjectDecodeError):
    """A peer's bytes do not follow distcomm's wire format (a length, dimension, count or code out
    of bounds, or no call header at all): raised on the receiving ranks, before anything is
    allocated for what the bytes announce."""


class CollectiveError(DistCommError, RuntimeError):
    """A collective that was started but could not complete.

    The message names the operation, the rank and the cause; the original exception
    is kept as ``__cause__``.
    """

    def __init__(self, operation: str, rank: int, cause: BaseException | str) -> None:
        self.operation = operation
        self.rank = rank
        self.cause = cause
        self.step: str = operation
        """The step that failed: a primitive such as ``all_gather`` inside the method the caller called."""
        self.reason: str | None = None
        reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{operation} failed on rank {rank}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, int, str]]:
        # Keep the error picklable (it crosses process boundaries in distcomm.testing).
        return (type(self), (self.operation, self.rank, str(self.cause)))


class ExcludedRankError(CollectiveError):
    """This rank is not among the survivors that :meth:`~distcomm.Communicator.shrink` agreed on:
    it arrived after they were fixed (it was stopped, or busy elsewhere) and cannot rejoin."""


class CollectiveMismatchError(CollectiveError):
    """Ranks entered different collectives (or the same one with different shapes)."""


def call_torch(step: str, rank: int, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call a torch.distributed function; its failure becomes a :class:`CollectiveError` naming ``step``."""
    try:
        return fn(*args, **kwargs)
    except DistCommError:
        raise
    except RuntimeError as error:
        raise CollectiveError(step, rank, error) from error


def renamed(error: CollectiveError, operation: str, rank: int) -> CollectiveError:
    """``error`` as raised by ``operation``, the method the caller called, naming the failed step
    (``error`` itself when it already speaks for ``operation``)."""
    if error.operation == operation and (error.reason is not None or isinstance(error, CollectiveMismatchError)):
        return error
    step, reason = error.step, error.reason
    if reason is None:
        reason = error.cause if isinstance(error.cause, str) else f"{type(error.cause).__name__}: {error.cause}"
    result = type(error)(operation, rank, f"its {step} step failed: {reason}")
    result.step, result.reason = step, reason
    result.__cause__ = error
    return result


class TraceError(DistCommError):
    """Flight records that cannot give a verdict as asked (none, or several runs and none chosen)."""


class UnsafeObjectError(ObjectDecodeError):
    """A received payload asked to rebuild something outside the restricted codec's allowlist,
    or announced more than its limits allow; raised on the receiving ranks."""


class RankTimeoutError(DistCommError, TimeoutError):
    """A rank did not finish a call in time and was killed."""


class RankDiedError(DistCommError, RuntimeError):
    """A rank process exited in the middle of a call."""


class RankFailure(DistCommError):
    """One or more ranks of a multi-rank run raised, hung or died; ``outcomes`` has every rank's
    :class:`~distcomm.testing.RankOutcome` (its ``rank``, ``value``, ``error`` and ``traceback``)."""

    def __init__(self, outcomes: Sequence[Any]) -> None:
        self.outcomes = outcomes
        failed = [o for o in outcomes if not o.ok]
        lines = [f"{len(failed)} of {len(outcomes)} ranks failed:"]
        for outcome in failed:
            lines.append(f"--- rank {outcome.rank}: {type(outcome.error).__name__}: {outcome.error}")
            if outcome.traceback:
                lines.append(outcome.traceback.rstrip())
        super().__init__("\n".join(lines))
