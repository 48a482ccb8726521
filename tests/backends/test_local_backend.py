"""LocalBackend: every primitive of a world of one is the identity (or a copy where a result is new)."""

from __future__ import annotations

import pytest
import torch

from distcomm import InvalidArgumentError
from distcomm.backends.local import LocalBackend
from distcomm.values.ops import ReduceOp


def test_the_primitives_of_a_world_of_one() -> None:
    backend = LocalBackend()
    tensor = torch.arange(4.0)
    backend.all_reduce(tensor, ReduceOp.SUM)
    backend.broadcast(tensor, 0)
    assert tensor.tolist() == [0.0, 1.0, 2.0, 3.0]
    gathered = backend.all_gather(tensor)
    assert gathered.shape == (1, 4) and gathered.data_ptr() != tensor.data_ptr()
    out = torch.empty(2)
    backend.reduce_scatter(out, tensor[:2], ReduceOp.SUM)
    assert out.tolist() == [0.0, 1.0]
    assert (backend.rank, backend.world_size, backend.accepts(torch.device("meta"))) == (0, 1, False)
    assert isinstance(backend.split([0]), LocalBackend) and backend.start_pairs([], []).wait() is None
    with pytest.raises(InvalidArgumentError, match="no peer"):
        backend.start_pairs([(tensor, 0)], [])
