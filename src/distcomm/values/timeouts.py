"""How long a collective may take: the default, and timeouts given as seconds or timedeltas.

Tested by tests/values/test_timeouts.py.
"""

from __future__ import annotations

import datetime

from distcomm.errors import InvalidArgumentError

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
"""torch's own default for a process group, and ours."""


def as_timeout(value: datetime.timedelta | float, name: str = "timeout") -> datetime.timedelta:
    """``value`` (seconds or a timedelta) as a positive timedelta, or a clear error."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidArgumentError(f"{name} must be seconds or a timedelta, got {value!r}")
    if not seconds > 0:
        raise InvalidArgumentError(f"{name} must be positive, got {seconds} seconds")
    return datetime.timedelta(seconds=seconds)
