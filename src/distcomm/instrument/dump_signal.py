"""Flight-record dumps on a signal, also while the main thread is blocked in a collective.

Opt-in only (``DISTCOMM_FLIGHT_RECORDER_SIGNAL=SIGUSR2``, or
:meth:`FlightRecorder.dump_on_signal <distcomm.FlightRecorder.dump_on_signal>`): a
library must not take a signal the application or its scheduler uses (SLURM and
submitit send ``SIGUSR1`` to ask for a checkpoint), nor the wake-up file an event loop
needs. Nothing is installed where the application handles the signal itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

from distcomm.instrument.hooks import Recorder

logger = logging.getLogger(__name__)


def parse_signal(value: str | int) -> signal.Signals | None:
    """The signal ``value`` names (``"SIGUSR2"``, ``"USR2"``, ``12``); ``None`` for none (``""``, ``"0"``, ``"none"``)."""
    if isinstance(value, str):
        text = value.strip().upper()
        if text in ("", "0", "NONE", "OFF", "NO", "FALSE"):
            return None
        if text.isdigit():
            value = int(text)
        else:
            name = text if text.startswith("SIG") else f"SIG{text}"
            if not hasattr(signal, name):
                raise ValueError(f"no signal is named {value!r} here; name one such as SIGUSR2, or none")
            return signal.Signals(getattr(signal, name))
    try:
        return signal.Signals(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a signal number here; name one such as SIGUSR2, or none") from None


def dump_on_signal(recorder: Recorder, signum: signal.Signals) -> bool:
    """Dump when ``signum`` arrives, also while the main thread is blocked inside a collective;
    whether it was installed.

    Python runs signal handlers only between bytecodes of the main thread, which a rank
    stuck in a collective never reaches; the signal's wake-up byte, written by the C
    handler, reaches a helper thread that writes the dump. Nothing is installed (and a
    warning says so) where the application handles ``signum`` itself, already uses the
    wake-up file, or this is not the main thread.
    """
    global _listening
    if _listening is not None or threading.current_thread() is not threading.main_thread():
        logger.warning("flight record dumps on %s not installed: %s", signum.name,
                       "one is already installed" if _listening is not None else "not in the main thread")  # fmt: skip
        return False
    if signal.getsignal(signum) not in (signal.SIG_DFL, None):
        logger.warning("flight record dumps on %s not installed: the application handles that signal", signum.name)
        return False
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except (ValueError, OSError):
        previous = None
    if previous != -1:  # it could not be set, or someone else listens there: leave it to them
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)
        logger.warning("flight record dumps on %s not installed: the signal wake-up file is in use", signum.name)
        return False
    signal.signal(signum, _ignore)
    _listening = signum

    def listen() -> None:
        while True:
            try:
                received = os.read(read_end, 64)
            except OSError:
                return
            if signum in received:
                recorder.dump(signum.name)

    threading.Thread(target=listen, name="distcomm-flight-signal", daemon=True).start()
    return True


_listening: signal.Signals | None = None
"""The signal this process listens for, if any (then a forked child must not inherit the pipe)."""


def _ignore(signum: int, frame: object) -> None:
    """The Python-level handler of the dump signal: the listening thread does the work."""


def _after_fork_in_child() -> None:
    """A forked child does not listen: the parent's signal pipe is not its own."""
    global _listening
    if _listening is not None:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
            signal.signal(_listening, signal.SIG_DFL)
        _listening = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
