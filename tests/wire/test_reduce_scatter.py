"""The argument check of a split reduce-scatter, and its lone-tensor path in a world of one."""

from __future__ import annotations

import pytest
import torch

from distcomm import InvalidArgumentError, LocalCommunicator
from distcomm.values.ops import ReduceOp
from distcomm.wire.reduce_scatter import check_split, start_reduce_scatter


@pytest.mark.parametrize(("shape", "dim"), [((), 0), ((3,), 1), ((3,), -2), ((3,), True), ((3,), "0")])
def test_a_dim_a_tensor_cannot_be_split_along_is_refused(shape, dim) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot split a tensor of shape"):
        check_split(torch.ones(shape), dim, "reduce_scatter")


def test_a_world_of_one_returns_a_new_tensor_and_leaves_the_input_alone() -> None:
    context = LocalCommunicator()._context
    tensor = torch.arange(4.0)
    handle = start_reduce_scatter(context, tensor, ReduceOp.MEAN, 0, asynchronous=True)
    result = handle.wait()
    assert result.tolist() == [0.0, 1.0, 2.0, 3.0] and result.data_ptr() != tensor.data_ptr()
