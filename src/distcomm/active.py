"""The active communicator: the one that the ``distutils`` facade and library code use.

Resolution order for :func:`get_communicator`:

1. the communicator of the innermost :func:`use_communicator` block in this thread
   (or asyncio task);
2. the one given to :func:`set_communicator`, for the whole process;
3. a :class:`TorchDistCommunicator` over torch.distributed's default group whenever one
   is initialized, even one the caller created directly with ``init_process_group``;
4. otherwise a :class:`LocalCommunicator`.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

import torch.distributed as dist

from distcomm.communicator import Communicator
from distcomm.errors import InvalidArgumentError
from distcomm.local import LocalCommunicator
from distcomm.torch_dist import TorchDistCommunicator

_scoped: contextvars.ContextVar[Communicator | None] = contextvars.ContextVar("distcomm_scoped", default=None)
_lock = threading.Lock()
_process_wide: Communicator | None = None
_follower: TorchDistCommunicator | None = None  # wraps whatever default group exists now
_local = LocalCommunicator()


def get_communicator() -> Communicator:
    """The communicator that code without one injected should use now."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _process_wide is not None:
        return _process_wide
    return _follow_default_group()


def _follow_default_group() -> Communicator:
    global _follower
    default_group = dist.group.WORLD if dist.is_available() else None
    if default_group is None:
        if _follower is not None:
            forget_default_group()
        return _local
    follower = _follower
    if follower is not None and follower.group is default_group:
        return follower
    with _lock:
        if _follower is None or _follower.group is not default_group:
            _follower = TorchDistCommunicator()
        return _follower


def forget_default_group() -> None:
    """Drop the cached communicator over the default group, so a destroyed group is not kept alive."""
    global _follower
    with _lock:
        _follower = None


def set_communicator(comm: Communicator | None) -> Communicator | None:
    """Make ``comm`` the active communicator for the whole process; ``None`` goes back
    to following torch.distributed. Returns the one set before."""
    global _process_wide
    _check(comm, allow_none=True)
    with _lock:
        previous, _process_wide = _process_wide, comm
    return previous


@contextlib.contextmanager
def use_communicator(comm: Communicator) -> Iterator[Communicator]:
    """Make ``comm`` active inside the block, in this thread only, and restore the
    previous one afterwards, even on error and when blocks nest."""
    _check(comm, allow_none=False)
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
