"""Small patterns every trainer needs, over any communicator (the active one by default).

Tested in tests/test_communicator.py, beside the collectives they are built on.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

from distcomm.communicator import Communicator
from distcomm.errors import InvalidArgumentError
from distcomm.launch.active import get_communicator
from distcomm.values.conversion import describe

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound=Sequence[Any])


def rank_zero_only(fn: Callable[P, R]) -> Callable[P, R | None]:
    """Decorate ``fn`` to run only on rank 0 of the active communicator; other ranks get ``None``.

    The rank is read at call time, so the decorator works on module-level functions
    defined before any process group exists.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        return fn(*args, **kwargs) if get_communicator().rank == 0 else None

    return wrapper


@contextlib.contextmanager
def main_process_first(comm: Communicator | None = None) -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (download once, then read the cache).

    Rank 0 reaches the closing barrier even when its block raises, so the others are
    released instead of hanging.
    """
    comm = comm or get_communicator()
    if not comm.is_master:
        comm.barrier()
    try:
        yield
    finally:
        if comm.is_master:
            comm.barrier()


def split_between_ranks(items: S, comm: Communicator | None = None) -> S:
    """This rank's contiguous share of ``items``; shares differ in length by at most one.

    The slice keeps the input's type (a list, a tuple, a tensor, a range...).
    """
    comm = comm or get_communicator()
    if not hasattr(items, "__len__") or not hasattr(items, "__getitem__"):
        raise InvalidArgumentError(f"split_between_ranks needs a sliceable sequence, got {describe(items)}")
    base, extra = divmod(len(items), comm.world_size)
    start = comm.rank * base + min(comm.rank, extra)
    stop = start + base + (1 if comm.rank < extra else 0)
    return items[start:stop]  # type: ignore[return-value]


def any_rank(flag: bool, comm: Communicator | None = None) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. "stop early")."""
    return bool((comm or get_communicator()).all_reduce(bool(flag), "max"))


def all_ranks(flag: bool, comm: Communicator | None = None) -> bool:
    """True on every rank when ``flag`` is true on all of them."""
    return bool((comm or get_communicator()).all_reduce(bool(flag), "min"))
