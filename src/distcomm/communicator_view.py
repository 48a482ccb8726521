"""``CommunicatorView``: a communicator as another one with more hooks, sharing its backend, state and ranks.

The base of :class:`~distcomm.CheckedCommunicator` and :class:`~distcomm.ProfiledCommunicator`;
``comm.with_hooks(...)`` makes such views too.

Tested by tests/instrument/test_hooks.py and tests/debug/.
"""

from __future__ import annotations

from distcomm.backends.backend import Backend
from distcomm.communicator import Communicator
from distcomm.instrument.hooks import Hook


class CommunicatorView(Communicator):
    """``inner`` with more hooks, as a communicator of its own: same backend, state and ranks.

    ``inner``'s hooks run too, also those registered on it later; ``inner`` itself stays as it
    was. Closing the view closes ``inner``. Splits of the view are views of ``inner``'s splits,
    with this view's hooks carried on.
    """

    def __init__(self, inner: Communicator, *hooks: Hook) -> None:
        if not isinstance(inner, Communicator):
            raise TypeError(f"{type(self).__name__} wraps a Communicator, got {type(inner).__name__}")
        self._attach(inner.tensor_backend, hooks=hooks, viewed=inner)

    @property
    def inner(self) -> Communicator:
        """The communicator this one is a view of."""
        assert self._viewed is not None
        return self._viewed

    def _open_backend(self) -> Backend:
        return self.inner.tensor_backend

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"
