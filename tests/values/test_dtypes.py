"""The dtypes distcomm sends: their wire codes and the int64 range."""

from __future__ import annotations

import torch

from distcomm.values.dtypes import DTYPE_CODES, DTYPES, DTYPES_BY_NAME, fits_int64


def test_int64_bounds() -> None:
    assert fits_int64(2**63 - 1) and fits_int64(-(2**63)) and not fits_int64(2**63) and not fits_int64(-(2**63) - 1)


def test_dtype_codes_are_indices_that_never_move() -> None:
    assert all(DTYPES[DTYPE_CODES[dtype]] is dtype for dtype in DTYPES)
    assert (DTYPE_CODES[torch.bool], DTYPE_CODES[torch.float32], DTYPE_CODES[torch.uint64]) == (0, 8, 14)
    assert DTYPES_BY_NAME["torch.bfloat16"] is torch.bfloat16
