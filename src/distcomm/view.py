"""``CommunicatorView``: the same communicator with one more hook, as a value of its own type.

Tested through its two views: tests/test_checked.py and tests/test_profiled.py.
"""

from __future__ import annotations

from distcomm.backend import Backend
from distcomm.communicator import Communicator
from distcomm.hooks import Hook


class CommunicatorView(Communicator):
    """A communicator over the same backend and state as ``inner``, with one more hook.

    The base of :class:`~distcomm.CheckedCommunicator` and
    :class:`~distcomm.ProfiledCommunicator`: closing either closes ``inner``; ``inner``
    itself stays as it was.
    """

    def __init__(self, inner: Communicator, hook: Hook) -> None:
        if not isinstance(inner, Communicator):
            raise TypeError(f"{type(self).__name__} wraps a Communicator, got {type(inner).__name__}")
        self.inner = inner
        super().__init__()
        self._state, self._channel, self._device_types = inner._state, inner._channel, inner._device_types
        self._hooks = inner._hooks
        self._recorder, self._record_group = inner._recorder, inner._record_group
        self.register_hook(hook)

    def _open_backend(self) -> Backend:
        return self.inner.tensor_backend

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def _child(self, backend: Backend) -> Communicator:
        return self._rewrap(self.inner._child(backend))

    def _rewrap(self, child: Communicator) -> Communicator:
        """This view's kind of view around ``child``."""
        raise NotImplementedError
