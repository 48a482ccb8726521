"""A broadcast's fill: a tensor the backend cannot take as it is goes through a copy, filled back."""

from __future__ import annotations

import torch

from distcomm import LocalCommunicator
from distcomm.wire.broadcast import start_broadcast


def test_a_lazy_view_is_filled_through_a_copy_and_the_handle_is_done_at_once() -> None:
    context = LocalCommunicator()._context
    view = torch._neg_view(torch.tensor([1.0, 2.0]))
    handle = start_broadcast(context, view, 0)
    assert handle.wait() is view and view.tolist() == [-1.0, -2.0] and not handle.asynchronous
