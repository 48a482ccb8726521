"""One seat of a ``python -m distcomm run`` job on this node: its worker process, started cold
(``python -u TARGET``, as torchrun does) or warm (:mod:`distcomm.launch.warm_start`), and started
again in place by :mod:`distcomm.launch.agent` when it dies.

Tested through the agent: tests/launch/test_agent.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from distcomm.launch.local_world import process_context
from distcomm.launch.warm_start import run_target


class Worker:
    """One seat's process: started cold (``python -u TARGET``) or warm, and started again in place."""

    def __init__(self, seat: int, local_rank: int, target: tuple[str, ...], warm_start: bool = False) -> None:
        self.seat, self.local_rank, self.target, self.warm_start = seat, local_rank, target, warm_start
        self.restarts = 0
        self.exit_code: int | None = None
        """The last process's status, once it ended."""
        self._process: Any = None

    def start(self, env: dict[str, str]) -> None:
        self.exit_code = None
        if self.warm_start:
            self._process = process_context().Process(target=run_target, args=(list(self.target), env), daemon=False)
            self._process.start()
        else:
            self._process = subprocess.Popen([sys.executable, "-u", *self.target], env=env)

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    def poll(self) -> int | None:
        """The process's exit status once it ended (minus the signal that killed it), else ``None``."""
        if self.exit_code is None:
            if self.warm_start:
                self.exit_code = None if self._process.is_alive() else self._process.exitcode
            else:
                self.exit_code = self._process.poll()
        return self.exit_code

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self._process is None or self.poll() is not None:
            return
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.exit_code is not None:
                return
