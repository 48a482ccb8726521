"""The dtypes distcomm sends, their wire codes, and the range of int64.

On the wire a dtype is its index in :data:`DTYPES` (new ones go at the end, so old codes
keep their meaning); Python ints outside int64 take exact paths.

Tested by tests/values/test_dtypes.py.
"""

from __future__ import annotations

import torch

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The range of values an int64 tensor holds; Python ints outside it take exact paths."""


def fits_int64(value: int) -> bool:
    """Whether the Python int ``value`` fits in an int64 tensor."""
    return INT64_MIN <= value <= INT64_MAX


DTYPES: tuple[torch.dtype, ...] = (
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.uint16, torch.uint32, torch.uint64,
)  # fmt: skip
"""Every dtype distcomm sends; on the wire a dtype's code is its index (new ones go at the end)."""
DTYPE_CODES: dict[torch.dtype, int] = {dtype: code for code, dtype in enumerate(DTYPES)}
DTYPES_BY_NAME: dict[str, torch.dtype] = {str(dtype): dtype for dtype in DTYPES}
