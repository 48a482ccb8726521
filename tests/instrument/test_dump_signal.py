"""Dumps on a signal: opt-in, installed only where the application has no handler, and never on import."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from distcomm.instrument import flight_recorder
from distcomm.instrument.dump_signal import parse_signal

pytestmark = pytest.mark.integration  # real jobs or subprocesses: left out of the fast loop


def test_signals_are_named_as_people_write_them() -> None:
    assert parse_signal("none") is None and parse_signal("") is None and parse_signal("0") is None
    assert parse_signal("usr2") == parse_signal("SIGUSR2") == parse_signal(int(signal.SIGUSR2)) == signal.SIGUSR2
    with pytest.raises(ValueError, match="no signal is named 'SIGNOPE'"):
        parse_signal("SIGNOPE")
    with pytest.raises(ValueError, match="is not a signal number"):
        parse_signal(100000)


IMPORT_LEAVES_NOTHING = """
import signal, threading
handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGTERM)}
threads = threading.active_count()
import distcomm
from distcomm import distutils
assert {s: signal.getsignal(s) for s in handlers} == handlers, "import changed a signal handler"
assert threading.active_count() == threads, "import started a thread"
previous = signal.set_wakeup_fd(-1)
assert previous == -1, f"import took the wakeup fd {previous}"
comm = distcomm.LocalCommunicator()  # recording, but without the opt-in nothing is installed
comm.all_reduce(1.0)
assert {s: signal.getsignal(s) for s in handlers} == handlers and threading.active_count() == threads
assert signal.set_wakeup_fd(-1) == -1 and comm.flight_recorder.dump_signal is None
print("untouched")
"""

OPT_IN = """
import signal, threading
import distcomm
comm = distcomm.LocalCommunicator()
assert comm.flight_recorder.dump_signal == signal.SIGUSR2, comm.flight_recorder.dump_signal
assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
print("installed")
"""

APPLICATION_HANDLER = """
import signal
mine = lambda *args: None
signal.signal(signal.SIGUSR2, mine)
import distcomm
comm = distcomm.LocalCommunicator()
assert comm.flight_recorder.dump_signal is None and signal.getsignal(signal.SIGUSR2) is mine
print("left alone")
"""


@pytest.mark.parametrize(
    ("script", "variable", "printed"),
    [(IMPORT_LEAVES_NOTHING, "", "untouched"), (OPT_IN, "SIGUSR2", "installed"), (APPLICATION_HANDLER, "USR2", "left alone")],
    ids=["import", "opt-in", "application-handler"],
)
def test_importing_changes_no_process_state_and_a_dump_signal_is_opt_in(script: str, variable: str, printed: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DISTCOMM_")}
    if variable:
        environment[flight_recorder.SIGNAL_VARIABLE] = variable
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == printed, result.stderr


