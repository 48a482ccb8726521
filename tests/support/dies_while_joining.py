"""A worker of examples/resilient_training.py whose seat 1's first replacement dies while it joins: it is
SIGKILLed right after the live ranks admitted it, before the grown world forms (a fault injected
into a real process; every collective and the store stay real)."""

import os
import runpy
import signal
import sys
from pathlib import Path

from distcomm.wire import rejoin

if os.environ.get("DISTCOMM_RESTART_COUNT") == "1" and os.environ.get("RANK") == "1":
    admitted = rejoin.JobStore.wait_admission

    def admitted_then_killed(self, index, timeout):  # type: ignore[no-untyped-def]
        admission = admitted(self, index, timeout)
        print(f"replacement of seat {self.seat} admitted as {admission}; dying before the world forms", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    rejoin.JobStore.wait_admission = admitted_then_killed  # type: ignore[method-assign]

example = Path(__file__).parents[2] / "examples" / "resilient_training.py"
sys.argv = [str(example), *sys.argv[1:]]
runpy.run_path(str(example), run_name="__main__")
