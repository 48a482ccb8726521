"""What a rank states it sends in an all-to-all or scatter, before any data moves."""

from __future__ import annotations

import torch

from distcomm.wire.all_to_all import OBJECTS, Outgoing, is_tensor_list, outgoing_of


def test_tensors_state_their_dtype_and_shapes_and_small_ones_ride_along() -> None:
    stated = outgoing_of([torch.ones(2), torch.ones(3)], 2, "all_to_all", objects_allowed=True)
    assert (stated.dtype, stated.shapes, stated.problem) == ("float32", ((2,), (3,)), None)
    assert stated.inline is not None and len(stated.inline) == 5 * 4


def test_objects_and_problems_are_stated_not_raised() -> None:
    assert outgoing_of(["a", "b"], 2, "all_to_all", objects_allowed=True) == Outgoing(OBJECTS)
    assert "one per rank" in (outgoing_of(["a"], 2, "all_to_all", objects_allowed=True).problem or "")
    assert "mixes tensors" in (outgoing_of(["a", torch.ones(1)], 2, "all_to_all", objects_allowed=True).problem or "")
    assert "every entry must be a tensor" in (outgoing_of(["a", "b"], 2, "all_to_all_async", objects_allowed=False).problem or "")
    assert is_tensor_list([torch.ones(1)]) and not is_tensor_list("ab") and not is_tensor_list([1])
