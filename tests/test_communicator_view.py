"""CommunicatorView: another communicator's state and ranks, with hooks of its own; its splits are
views of the splits of the communicator it views."""

from __future__ import annotations

from distcomm import CheckedCommunicator, LocalCommunicator
from distcomm.communicator_view import CommunicatorView


def test_a_view_shares_state_and_its_split_is_a_view_of_the_inner_split() -> None:
    inner = LocalCommunicator()
    view = CheckedCommunicator(inner)
    assert isinstance(view, CommunicatorView) and view.inner is inner and repr(view).startswith("CheckedCommunicator(")
    assert view._state is inner._state and view.tensor_backend is inner.tensor_backend
    child = view.split([0])
    assert isinstance(child, CheckedCommunicator) and isinstance(child.inner, LocalCommunicator)
    view.close()
    assert inner.closed  # closing the view closes what it views
