"""The flight recorder: every rank remembers its last collectives, to say after a hang who
was stuck where.

One :class:`FlightRecorder` per process keeps a ring buffer of the last ``size`` public
collectives of every communicator: the group, a sequence number per group, the
operation, the data's dtypes and shapes, the reduce op or root, the caller's file, line
and function (the first frame outside distcomm), and the state (started, completed,
failed) with monotonic times. It is cheap enough to stay on (one to two microseconds per
call); ``DISTCOMM_FLIGHT_RECORDER=0`` turns it off, and then nothing is paid.

It writes one JSON-lines file per rank (``<job>-rank<R>.jsonl`` in its directory) when a
collective raises :class:`~distcomm.CollectiveError`, on
:meth:`Communicator.dump_flight_record`, and, when asked, on a signal
(``DISTCOMM_FLIGHT_RECORDER_SIGNAL=SIGUSR2`` or ``dump_signal=``) and from a watchdog
thread once a call has been in flight too long. Importing distcomm installs nothing:
the recorder is made with the first communicator, and a signal handler only on request. ``python -m distcomm trace DIR`` reads the files of all
ranks and names the stuck ranks and calls. Writing a dump never raises into the caller.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any

import torch

from distcomm.environment.job import environment_flag, identity_from_environment, job_name
from distcomm.errors import CollectiveError, ConfigurationError
from distcomm.instrument.dump_signal import dump_on_signal, parse_signal
from distcomm.instrument.hooks import CollectiveSpec, Recorder
from distcomm.instrument.record_format import (
    CALL,
    COMPLETED,
    DEFAULT_DIRECTORY,
    DIRECTORY_VARIABLE,
    FAILED,
    HEADER,
    SOME_RANKS,
    STARTED,
)
from distcomm.values.conversion import dtype_name

if TYPE_CHECKING:
    from types import FrameType

logger = logging.getLogger(__name__)

SWITCH = "DISTCOMM_FLIGHT_RECORDER"
"""``0`` (or false, no, off) turns the recorder off."""
SIZE_VARIABLE = "DISTCOMM_FLIGHT_RECORDER_SIZE"
SIGNAL_VARIABLE = "DISTCOMM_FLIGHT_RECORDER_SIGNAL"
"""A signal (``SIGUSR2``) on which the recorder writes a dump; unset: none (nothing is installed)."""
WATCHDOG_VARIABLE = "DISTCOMM_FLIGHT_RECORDER_WATCHDOG"
"""Seconds a call may be in flight before the watchdog writes a dump (unset: no watchdog)."""
DEFAULT_SIZE = 4096

_getframe, _now, _Tensor = sys._getframe, time.monotonic_ns, torch.Tensor  # looked up on every call


_internal_files: dict[str, bool] = {}
"""Whether a source file is distcomm's own (then its caller is looked at instead), by file name."""
_PACKAGE_DIRECTORY = str(Path(__file__).resolve().parent.parent)  # distcomm itself, every package of it

"""The states of a recorded call."""


# The fields of a row of the ring: one list per call, filled when it starts and completed when it
# ends. A list, not an object, because one is made per call and a list is made in a tenth of the
# time; :class:`RecordedCall` reads one. It keeps the data's dtype and shape and the caller's code
# and line, never the data or the frame (they would keep the caller's tensors and locals alive).
GROUP, SEQ, SPEC, DETAIL, DTYPE, SHAPE, CODE, OFFSET, START_NS, END_NS, STATE, ERROR = range(12)


class RecordedCall:
    """One row of the ring, read by name: what a dump and the watchdog see of a call."""

    __slots__ = ("row",)

    def __init__(self, row: list[Any]) -> None:
        self.row = row

    @property
    def op(self) -> str:
        return str(self.row[SPEC].operation)

    @property
    def state(self) -> str:
        return str(self.row[STATE])

    @property
    def start_ns(self) -> int:
        return int(self.row[START_NS])

    def as_record(self) -> dict[str, Any]:
        """The call as a plain dict (a line of a dump)."""
        group, seq, spec, detail, dtype, shape, code, offset, start_ns, end_ns, state, error = self.row
        data = f"{dtype_name(dtype)}{list(shape)}" if shape is not None else dtype.__name__
        end = end_ns or None
        return {
            "kind": CALL, "group": group, "seq": seq, "op": spec.operation, "data": data,
            "detail": _detail_text(spec.detail_name, detail),
            "file": code.co_filename if code else None, "line": _line_of(code, offset) if code else None,
            "function": code.co_name if code else None, "state": state,
            "start_ns": start_ns, "end_ns": end,
            "duration_ms": None if end is None else (end - start_ns) / 1e6, "error": error,
        }  # fmt: skip


class FlightRecorder(Recorder):
    """A ring buffer of this process's last collectives, and the dumps written from it.

    Communicators record into :func:`default_recorder` unless told otherwise; attach
    another with ``comm.register_hook(FlightRecorder(...))``.
    """


    def __init__(
        self,
        size: int = DEFAULT_SIZE,
        directory: str | os.PathLike[str] | None = None,
        watchdog_seconds: float | None = None,
        dump_signal: str | int | None = None,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_SIZE:
            raise ValueError(f"a flight recorder keeps 1 to {MAX_SIZE} calls, got size={size!r}")
        signum = None if dump_signal is None else parse_signal(dump_signal)
        self.entries: collections.deque[list[Any]] = collections.deque(maxlen=size)
        self._append = self.entries.append
        chosen = directory or os.environ.get(DIRECTORY_VARIABLE)
        self._directory: Path | None = Path(chosen) if chosen else None
        self._library_base = Path.cwd()
        """Where the default place is (``./distcomm-flight-records/<run>``): every level below is the library's own."""
        self._counters: dict[str, Iterator[int]] = {}
        self._lock = threading.Lock()
        self.watchdog_seconds: float | None = None
        if watchdog_seconds is not None:
            self.watch(watchdog_seconds)
        self.dump_signal: signal.Signals | None = None
        """The signal on which this recorder writes a dump, where one was installed."""
        if signum is not None:
            self.dump_on_signal(signum)

    def dump_on_signal(self, signum: str | int) -> bool:
        """Write a dump whenever ``signum`` (``"SIGUSR2"``, ``"USR2"`` or a number) arrives, also while
        the main thread is blocked in a collective; whether it is installed (see the log where not)."""
        parsed = parse_signal(signum)
        if parsed is None:
            return False
        if self.dump_signal != parsed and dump_on_signal(self, parsed):
            self.dump_signal = parsed
        return self.dump_signal == parsed

    @property
    def directory(self) -> Path:
        """Where dumps go: one ``<job>-rank<R>.jsonl`` per rank (``DISTCOMM_FLIGHT_RECORDER_DIR``, else
        ``./distcomm-flight-records/<job>``, the job's name being unique to the run where no launcher
        names it: records of different runs never mix)."""
        return self._directory or self._library_base / DEFAULT_DIRECTORY / job_name()

    @directory.setter
    def directory(self, value: str | os.PathLike[str]) -> None:
        self._directory = Path(value)

    def watch(self, seconds: float) -> None:
        """Start a watchdog thread that dumps once for each call in flight longer than ``seconds``."""
        if not seconds > 0:
            raise ValueError(f"the watchdog needs a positive number of seconds, got {seconds!r}")
        if self.watchdog_seconds is None:
            _Watchdog(self).start()
        self.watchdog_seconds = seconds

    # ------------------------------------------------------------------ recording

    def _counter(self, group: str) -> Iterator[int]:
        """The call counter of ``group``: one per group, shared by every communicator over it."""
        with self._lock:
            counter = self._counters.get(group)
            if counter is None:
                counter = self._counters[group] = itertools.count(1)
            return counter

    def start(self, comm: Any, spec: CollectiveSpec, args: tuple[Any, ...], kwargs: dict[str, Any], caller: FrameType | None) -> list[Any]:
        """Note that a call starts now, with its caller: the first frame outside distcomm from
        ``caller`` up. Its row is made here and completed by :meth:`end`: the per-call price of the
        recorder, so the caller's line is kept as its instruction offset (read as a line in a dump)."""
        frame = caller
        while frame is not None:
            code = frame.f_code
            inside = _internal_files.get(code.co_filename)
            if inside is None:
                inside = _internal_files[code.co_filename] = os.path.abspath(code.co_filename).startswith(_PACKAGE_DIRECTORY)
            if not inside:
                break
            frame = frame.f_back
        group = comm.group_name if spec.every_rank else comm.group_name + SOME_RANKS  # numbered apart
        counter = self._counters.get(group) or self._counter(group)
        if args:
            data = args[0]
        else:
            data = kwargs.get(spec.data_name) if spec.data_name else None
        if len(args) > 1:
            detail = args[1]
        else:
            detail = kwargs.get(spec.detail_name, spec.detail_default) if kwargs else spec.detail_default
        dtype: Any
        if type(data) is _Tensor:
            dtype, shape = data.dtype, data.shape
        else:
            dtype, shape = type(data), None
        if frame is None:
            row = [group, next(counter), spec, detail, dtype, shape, None, None, _now(), 0, STARTED, None]
        else:
            row = [group, next(counter), spec, detail, dtype, shape, frame.f_code, frame.f_lasti, _now(), 0, STARTED, None]
        self._append(row)
        return row

    def end(self, record: list[Any], error: BaseException | None) -> None:
        """Complete the call's row: completed, or failed with ``error`` (a failed collective dumps)."""
        record[END_NS] = _now()
        if error is None:
            record[STATE] = COMPLETED
            return
        record[STATE], record[ERROR] = FAILED, f"{type(error).__name__}: {error}"
        if isinstance(error, CollectiveError):
            self.dump(f"{record[SPEC].operation} #{record[SEQ]} failed: {error}")

    # ------------------------------------------------------------------- reading

    def records(self) -> list[dict[str, Any]]:
        """The recorded calls, oldest first, as plain dicts (what a dump writes)."""
        with self._lock:
            rows = list(self.entries)
        return [RecordedCall(row).as_record() for row in rows]

    def in_flight(self, longer_than_seconds: float = 0.0) -> list[dict[str, Any]]:
        """Calls started and not finished, that have run for more than ``longer_than_seconds``."""
        now = time.monotonic_ns()
        limit = longer_than_seconds * 1e9
        calls = [RecordedCall(row) for row in list(self.entries)]
        return [call.as_record() for call in calls if call.state == STARTED and now - call.start_ns > limit]

    def dump(self, reason: str = "requested") -> Path | None:
        """Write this rank's records to ``<directory>/<job>-rank<R>.jsonl``; the path, or ``None``
        when it could not be written (logged, never raised).

        The file is created new (``O_EXCL``, mode 0600) in a directory this user owns, then
        renamed into place, so a planted link is never followed; a directory that is a link,
        or that another user owns and others may write to, is refused.
        """
        try:
            rank, world_size = _identity()
            directory = self.directory
            _check_directory(directory, None if self._directory is not None else self._library_base)
            path = directory / f"{job_name()}-rank{rank}.jsonl"
            header = {
                "kind": HEADER, "rank": rank, "world_size": world_size, "job": job_name(), "host": socket.gethostname(),
                "pid": os.getpid(), "reason": reason, "wall_time": time.time(), "monotonic_ns": time.monotonic_ns(),
            }  # fmt: skip
            lines = [json.dumps(header)] + [json.dumps(record) for record in self.records()]
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)  # O_EXCL, 0600
            try:
                with os.fdopen(handle, "w") as file:
                    file.write("\n".join(lines) + "\n")
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            logger.warning("flight record of rank %d written to %s (%s)", rank, path, reason)
            return path
        except Exception as error:  # noqa: BLE001 (a dump must never break the training loop)
            logger.error("could not write the flight record: %s", error)
            return None


def _check_directory(directory: Path, library_base: Path | None = None) -> None:
    """Create ``directory`` (mode 0700) one level at a time where needed. Refuse any level the
    library creates (every level below ``library_base`` for the default place, else the levels
    that did not exist) that is a link, is not a directory or belongs to another user; and refuse
    the directory itself when it is a link, is not a directory, or belongs to another user and
    others may write to it (they could swap what we write)."""
    base = library_base
    if base is None:
        base = directory
        while not os.path.lexists(base) and base.parent != base:
            base = base.parent
    mine = hasattr(os, "geteuid")
    current = base
    for part in directory.relative_to(base).parts if directory != base else ():
        current = current / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(current, 0o700)
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise OSError(f"{current} is a link or not a directory: refusing to write flight records there")
        if mine and info.st_uid != os.geteuid():
            raise OSError(f"{current} belongs to another user: refusing to write flight records there")
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{directory} is a link or not a directory: refusing to write flight records there")
    if mine and info.st_uid != os.geteuid() and info.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
        raise OSError(f"{directory} belongs to another user and others may write to it: choose another directory")


def _line_of(code: CodeType, offset: int) -> int | None:
    """The source line of the instruction at byte ``offset`` of ``code`` (a frame's ``f_lasti``)."""
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line
    return None


def _detail_text(name: str, value: Any) -> str:
    """``op=sum``, ``src=1``: the argument that must match across ranks besides the data."""
    if not name:
        return ""
    if not isinstance(value, (str, int)):
        value = getattr(value, "value", None) or getattr(value, "name", None) or value  # a ReduceOp, ours or torch's
    return f"{name}={value}"


def _identity() -> tuple[int, int]:
    """This process's global rank and the world size, as torch.distributed or the launcher says
    (0 of 1 where neither says)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        return identity_from_environment()
    except ConfigurationError:
        return 0, 1


class _Watchdog(threading.Thread):
    """Dumps once for each call in flight longer than the recorder's ``watchdog_seconds``."""

    def __init__(self, recorder: FlightRecorder) -> None:
        super().__init__(name="distcomm-flight-watchdog", daemon=True)
        self.recorder = recorder

    def run(self) -> None:
        reported: set[tuple[str, int]] = set()
        while True:
            seconds = self.recorder.watchdog_seconds or 1.0
            time.sleep(min(1.0, seconds / 4))
            for record in self.recorder.in_flight(seconds):
                key = (record["group"], record["seq"])
                if key not in reported:
                    reported.add(key)
                    self.recorder.dump(f"watchdog: {record['op']} #{record['seq']} in flight over {seconds:g} s")


# ----------------------------------------------------------------- the default

_default: FlightRecorder | None = None
_default_lock = threading.Lock()


def default_recorder() -> FlightRecorder | None:
    """The process's recorder, made when the first communicator that records is created (never on
    import); ``None`` when ``DISTCOMM_FLIGHT_RECORDER=0``."""
    global _default
    if _default is not None:
        return _default
    if not environment_flag(SWITCH, default=True):
        return None
    with _default_lock:
        if _default is None:
            watchdog = os.environ.get(WATCHDOG_VARIABLE, "")
            _default = FlightRecorder(
                _size_from_environment(),
                watchdog_seconds=float(watchdog) if _is_number(watchdog) else None,
                dump_signal=os.environ.get(SIGNAL_VARIABLE) or None,
            )
    return _default


MAX_SIZE = 10**7
"""The most calls a recorder keeps (a ring this long takes about a gigabyte)."""


def _size_from_environment() -> int:
    text = os.environ.get(SIZE_VARIABLE, "").strip()
    if not text:
        return DEFAULT_SIZE
    if text.isdigit() and 0 < int(text) <= MAX_SIZE:
        return int(text)
    logger.warning("%s=%r is not a number of calls from 1 to %d; keeping %d", SIZE_VARIABLE, text[:40], MAX_SIZE, DEFAULT_SIZE)
    return DEFAULT_SIZE


def _is_number(text: str) -> bool:
    with contextlib.suppress(ValueError):
        return 0 < float(text) < float("inf")
    return False


def _after_fork_in_child() -> None:
    """A forked child starts with no recorder: the parent's records are not its own."""
    global _default, _default_lock
    _default_lock = threading.Lock()  # another thread may have held it at the fork
    _default = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
