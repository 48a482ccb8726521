"""The active communicator: the one that the ``distutils`` facade and library code use.

Resolution order for :func:`get_communicator`:

1. the communicator of the innermost :func:`use_communicator` block in this thread
   (or asyncio task);
2. the one given to :func:`set_communicator`, for the whole process;
3. a :class:`TorchDistCommunicator` over torch.distributed's default group whenever one
   is initialized, even one the caller created directly with ``init_process_group``;
4. otherwise a :class:`LocalCommunicator`.

``DISTCOMM_DEBUG=1`` and ``DISTCOMM_PROFILE=1`` make every communicator distcomm
hands out a :class:`CheckedCommunicator` or a :class:`ProfiledCommunicator` (see
:func:`instrument`): those of 1, 2 and 3, the one :func:`~distcomm.setup` returns, the
facade's per-group ones, and the one :class:`distcomm.testing.World` gives a test.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

import torch.distributed as dist

from distcomm.communicator import Communicator
from distcomm.debug.checked import CheckedCommunicator
from distcomm.debug.profiled import ProfiledCommunicator
from distcomm.environment.job import environment_flag
from distcomm.errors import InvalidArgumentError
from distcomm.local import LocalCommunicator
from distcomm.torch_dist import TorchDistCommunicator, owner_of_default_group

_scoped: contextvars.ContextVar[Communicator | None] = contextvars.ContextVar("distcomm_scoped", default=None)
_lock = threading.Lock()
_process_wide: Communicator | None = None
_follower: Communicator | None = None  # wraps whatever default group exists now
_followed_group: object = None
_local: Communicator | None = None  # made on first use: importing distcomm creates nothing


_group = dist.group if dist.is_available() else None  # ``_group.WORLD``: the default group or None


def get_communicator() -> Communicator:
    """The communicator that code without one injected should use now (called on hot paths: kept lean)."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _process_wide is not None:
        return _process_wide
    default_group = _group.WORLD if _group is not None else None
    if default_group is None:
        if _follower is not None:
            forget_default_group()
        return _local if _local is not None else _make_local()
    if _followed_group is default_group:
        return _follower  # type: ignore[return-value]
    return _follow_default_group(default_group)


def _make_local() -> Communicator:
    global _local
    with _lock:
        if _local is None:
            _local = LocalCommunicator()
        return _local


def _follow_default_group(default_group: object) -> Communicator:
    global _follower, _followed_group
    with _lock:
        if _follower is None or _followed_group is not default_group:
            owner = owner_of_default_group()  # the group's own communicator, where init() made it
            _follower, _followed_group = instrument(owner or TorchDistCommunicator()), default_group
        return _follower


def _wrapped_by(comm: Communicator, kind: type) -> bool:
    """Whether ``comm`` is a ``kind`` view already, or a view of one."""
    inner: Communicator | None = comm
    while inner is not None:
        if isinstance(inner, kind):
            return True
        inner = inner.inner
    return False


def instrument(comm: Communicator) -> Communicator:
    """``comm`` with the hooks the environment asks for: ``DISTCOMM_DEBUG=1`` checks every
    collective (:class:`CheckedCommunicator`), ``DISTCOMM_PROFILE=1`` times it
    (:class:`ProfiledCommunicator`, whose timings exclude the checks). ``comm`` itself
    when neither is set, or it already has them."""
    if environment_flag("DISTCOMM_DEBUG") and not _wrapped_by(comm, CheckedCommunicator):
        comm = CheckedCommunicator(comm)
    if environment_flag("DISTCOMM_PROFILE") and not _wrapped_by(comm, ProfiledCommunicator):
        comm = ProfiledCommunicator(comm)
    return comm


def forget_default_group() -> None:
    """Drop the cached communicator over the default group, so a destroyed group is not kept alive."""
    global _follower, _followed_group
    with _lock:
        _follower, _followed_group = None, None


def set_communicator(comm: Communicator | None) -> Communicator | None:
    """Make ``comm`` the active communicator for the whole process; ``None`` goes back
    to following torch.distributed. Returns the one set before."""
    global _process_wide
    _check(comm, allow_none=True)
    if comm is not None:
        comm = instrument(comm)
    with _lock:
        previous, _process_wide = _process_wide, comm
    return previous


@contextlib.contextmanager
def use_communicator(comm: Communicator) -> Iterator[Communicator]:
    """Make ``comm`` active inside the block, in this thread only, and restore the
    previous one afterwards, even on error and when blocks nest. Yields the active
    communicator: ``comm``, or ``comm`` with the hooks the environment asks for."""
    _check(comm, allow_none=False)
    comm = instrument(comm)
    token = _scoped.set(comm)
    try:
        yield comm
    finally:
        _scoped.reset(token)


def _check(comm: object, *, allow_none: bool) -> None:
    if comm is None and allow_none:
        return
    if not isinstance(comm, Communicator):
        raise InvalidArgumentError(f"expected a Communicator, got {type(comm).__name__}")
