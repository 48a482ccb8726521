"""Timeouts given as seconds or timedeltas."""

from __future__ import annotations

import datetime

import pytest

from distcomm import InvalidArgumentError
from distcomm.values.timeouts import DEFAULT_TIMEOUT, as_timeout


def test_seconds_and_timedeltas_become_timedeltas() -> None:
    assert as_timeout(1.5) == datetime.timedelta(seconds=1.5) and as_timeout(datetime.timedelta(minutes=1)).seconds == 60
    assert DEFAULT_TIMEOUT == datetime.timedelta(minutes=30)


@pytest.mark.parametrize("bad", [0, -1.0, True, "5", None])
def test_a_bad_timeout_is_a_clear_error(bad) -> None:
    with pytest.raises(InvalidArgumentError, match="timeout must be"):
        as_timeout(bad)
