"""A worker of examples/resilient_training.py with faults injected into the rejoin, each a
SIGKILL of a real process at a chosen point (every collective and the store stay real):

- ``KILL_JOINING=<seat>``: that seat's first replacement dies right after the live ranks admitted
  it, before the grown world forms;
- ``KILL_ADMITTING=<seat>``: that seat's first process dies as a live rank, right after it
  agreed to admit a newcomer, before the grown world forms.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from distcomm.wire import rejoin

seat, restarts = os.environ.get("RANK"), os.environ.get("DISTCOMM_RESTART_COUNT")


def killed_after(method_name: str, what: str) -> None:
    method = getattr(rejoin.JobStore, method_name)

    def then_killed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = method(self, *args, **kwargs)
        print(f"seat {seat} {what} {result}; dying before the world forms", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(rejoin.JobStore, method_name, then_killed)


if seat == os.environ.get("KILL_JOINING") and restarts == "1":
    killed_after("wait_admission", "(a replacement) was admitted as")
if seat == os.environ.get("KILL_ADMITTING") and restarts == "0":
    killed_after("admit", "(live) agreed to admit")

example = Path(__file__).parents[2] / "examples" / "resilient_training.py"
sys.argv = [str(example), *sys.argv[1:]]
runpy.run_path(str(example), run_name="__main__")
