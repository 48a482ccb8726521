"""The small shared rules: int64 bounds, environment flags, timeouts, dtype codes."""

from __future__ import annotations

import datetime

import pytest
import torch

from distcomm import InvalidArgumentError
from distcomm.rules import DTYPE_CODES, DTYPES, as_timeout, environment_flag, fits_int64


def test_int64_bounds() -> None:
    assert fits_int64(2**63 - 1) and fits_int64(-(2**63)) and not fits_int64(2**63) and not fits_int64(-(2**63) - 1)


@pytest.mark.parametrize(("word", "default", "expected"), [("1", False, True), ("Yes", False, True), ("off", True, False),
                                                           ("0", True, False), ("", True, True), ("maybe", False, False)])  # fmt: skip
def test_environment_flags(monkeypatch, word: str, default: bool, expected: bool) -> None:
    monkeypatch.setenv("DISTCOMM_TEST_FLAG", word)
    assert environment_flag("DISTCOMM_TEST_FLAG", default) is expected


def test_timeouts_and_dtype_codes() -> None:
    assert as_timeout(1.5) == datetime.timedelta(seconds=1.5)
    with pytest.raises(InvalidArgumentError, match="must be positive"):
        as_timeout(0)
    assert all(DTYPES[DTYPE_CODES[dtype]] is dtype for dtype in DTYPES) and DTYPES[0] is torch.bool
