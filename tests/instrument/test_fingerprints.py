"""What hooks see of a call: its signature across ranks and the bytes it moves."""

from __future__ import annotations

import numpy as np
import torch

from distcomm.instrument.fingerprints import op_name, payload_bytes, signature_of, tensor_layout


def test_signatures_name_dtypes_shapes_and_kinds() -> None:
    assert signature_of(torch.ones(2, 3)) == "float32[2, 3]"
    assert signature_of(torch.ones(2, 3), shapes=False) == "float32[2d]"
    nested = signature_of({"b": torch.ones(1), "a": 1.0})
    assert nested.startswith("dict(float, float32[1]) #") and nested == signature_of({"a": 2.0, "b": torch.zeros(1)})
    assert tensor_layout(5) == "object" and tensor_layout({"w": torch.ones(2)}).startswith("object with 1 tensors #")


def test_payload_bytes_and_op_names() -> None:
    assert payload_bytes({"t": torch.ones(4), "a": np.ones(2), "n": 3, "s": "text"}) == 16 + 16 + 8
    assert op_name("MEAN") == "mean" and op_name(["bogus"]) == "['bogus']"
