"""What every Backend gets from the base class: uneven gathers by padding, and the async forms done at once."""

from __future__ import annotations

import torch

from distcomm.backends.local import LocalBackend
from distcomm.values.ops import ReduceOp


def test_an_uneven_gather_pads_gathers_and_trims() -> None:
    backend = LocalBackend()  # it keeps the base class's all_gather_uneven
    (only,) = backend.all_gather_uneven(torch.arange(3.0), [torch.Size([3])])
    assert only.tolist() == [0.0, 1.0, 2.0]


def test_the_async_forms_of_a_backend_that_has_none_are_done_at_once() -> None:
    backend = LocalBackend()
    tensor = torch.ones(2)
    handle = backend.all_reduce_async(tensor, ReduceOp.SUM)
    assert not handle.asynchronous and handle.wait() is tensor
    assert backend.all_gather_async(tensor).wait().shape == (1, 2)
