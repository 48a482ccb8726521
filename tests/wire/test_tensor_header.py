"""One tensor header for gathers, point to point and all-to-all: written, read back, and refused
when a peer's words break the format or announce more than a rank may allocate."""

import numpy as np
import pytest
import torch

from distcomm.errors import WireFormatError
from distcomm.wire.tensor_header import MAX_DIMENSIONS, WORDS, header_words, read_tensor_header, unsupported


@pytest.mark.parametrize("tensor", [torch.ones(()), torch.zeros(3, 4, dtype=torch.int16), torch.ones([1] * MAX_DIMENSIONS, dtype=torch.bool)])
def test_a_header_reads_back_as_the_tensor_it_describes(tensor: torch.Tensor) -> None:
    words = header_words(tensor)
    assert len(words) == WORDS and unsupported(tensor, "x") is None
    assert read_tensor_header(words, "rank 1", 2**20) == (tensor.dtype, tensor.shape, tensor.numel() * tensor.element_size())


def test_no_tensor_reads_as_none() -> None:
    assert read_tensor_header(header_words(None), "rank 1", 2**20) is None


def test_what_no_header_can_describe_is_named() -> None:
    assert "at most 16 dimensions, got 17" in unsupported(torch.ones([1] * 17), "send")
    assert "does not support dtype" in unsupported(torch.ones(2, dtype=torch.float8_e4m3fn), "send")


@pytest.mark.parametrize(
    ("words", "message"),
    [([40, 8] + [1] * MAX_DIMENSIONS, "40 dimensions"), ([1, 99, 2] + [0] * 15, "dtype code 99"),
     ([1, 8, -3] + [0] * 15, r"shape \[-3\]"), ([2, 8, 2**25, 2**25] + [-1] * 14, "over the limit of 1048576 bytes")],
)  # fmt: skip
def test_a_peers_header_outside_the_format_is_refused_before_allocating(words: list[int], message: str) -> None:
    with pytest.raises(WireFormatError, match=f"rank 1 .*{message}"):
        read_tensor_header(np.array(words, dtype="<i8"), "rank 1", 2**20)
