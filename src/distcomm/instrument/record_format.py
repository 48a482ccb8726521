"""The flight-record format, written by :mod:`distcomm.instrument.flight_recorder` and read by
``python -m distcomm trace`` (:mod:`distcomm.cli.trace`): one JSON object a line, a header first
(``"kind": "header"``: rank, world_size, job, host, pid, reason, wall_time, monotonic_ns), then
one ``"kind": "call"`` record per call, with the fields of :data:`CALL_FIELDS`.

Tested by tests/instrument/test_flight_recorder.py and tests/cli/test_trace.py.
"""

from __future__ import annotations

DIRECTORY_VARIABLE = "DISTCOMM_FLIGHT_RECORDER_DIR"
"""Where dumps go, when set."""
DEFAULT_DIRECTORY = "distcomm-flight-records"
"""Where dumps go otherwise, below the working directory: one subdirectory per run."""

HEADER, CALL = "header", "call"
"""The ``kind`` of a dump's first line and of every line after it."""

STARTED, COMPLETED, FAILED = "started", "completed", "failed"
STATES = (STARTED, COMPLETED, FAILED)
"""What a call record's ``state`` may be."""

SOME_RANKS = " (some ranks)"
"""The suffix of the group a recorder files calls under when not every rank takes part (a send,
a receive, a shrink): their sequences differ by design, so only stuck calls are reported."""

CALL_FIELDS: dict[str, tuple[type, ...]] = {
    "group": (str,), "seq": (int,), "op": (str,), "data": (str,), "detail": (str,), "state": (str,),
    "file": (str, type(None)), "line": (int, type(None)), "function": (str, type(None)),
    "error": (str, type(None)), "duration_ms": (int, float, type(None)),
}  # fmt: skip
"""Every field of a call record and the JSON types it may have."""
