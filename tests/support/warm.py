"""Warm processes: run a script as ``python SCRIPT ARGS`` would, in a new process forked from a
server that has already imported torch and distcomm.

Starting an interpreter and importing torch costs about 1.5 s of CPU, and a launcher test
starts four ranks; on a 2-core machine that cost is most of the suite's time. A warm
process is still a real, separate process (its own pid, environment, working directory,
network namespace, sockets and process group), with the script run as ``__main__``, its
directory first on ``sys.path``, its standard output and error captured, ``atexit``
handlers run and its exit status returned. Only the interpreter's start is shared.

Tests that are about the interpreter itself (what importing distcomm changes, warnings
given with ``-W``, ``python -``, the README's quick start as a user types it) start a cold
``subprocess`` instead.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from distcomm.launch.local_world import process_context
from distcomm.launch.warm_start import run_target

_CLONE_NEWNET = 0x40000000


def _enter_network_namespace(name: str) -> None:
    """Move this (single-threaded, just forked) process into ``ip netns`` namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into network namespace {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _run(target: list[str], env: dict[str, str], cwd: str | None, netns: str | None, out: str, err: str) -> None:
    """The body of a warm process: ``target`` is ``[script, *args]``, ``["-c", code, *args]`` or
    ``["-m", module, *args]``."""
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own streams)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    if netns is not None:
        try:
            _enter_network_namespace(netns)
        except OSError:
            traceback.print_exc()
            os._exit(1)
    run_target(target, env, cwd)


class WarmProcess:
    """A started warm process; :meth:`communicate` waits for it like ``subprocess.Popen``'s."""

    def __init__(self, target: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 netns: str | None = None) -> None:  # fmt: skip
        self._directory = tempfile.TemporaryDirectory(prefix="distcomm-warm-")
        self._out = os.path.join(self._directory.name, "stdout")
        self._err = os.path.join(self._directory.name, "stderr")
        environment = dict(os.environ if env is None else env)
        self._process = process_context().Process(
            target=_run, args=(target, environment, cwd, netns, self._out, self._err), daemon=False
        )
        self._process.start()
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self._process.join()
            self.returncode = self._process.exitcode
        return self.returncode

    def kill(self) -> None:
        self._process.kill()
        self._process.join()

    def communicate(self, timeout: float) -> tuple[str, str]:
        """Wait for the process (killing it after ``timeout`` seconds); its stdout and stderr."""
        self._process.join(timeout)
        if self._process.is_alive():
            self.kill()
            raise TimeoutError(f"a warm process did not finish within {timeout} s:\n{self._read(self._err)}")
        self.returncode = self._process.exitcode
        out, err = self._read(self._out), self._read(self._err)
        self._directory.cleanup()
        return out, err

    @staticmethod
    def _read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""


def run(target: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
        timeout: float = 120) -> Any:  # fmt: skip
    """Like ``subprocess.run([sys.executable, *target], capture_output=True, text=True)``, warm."""
    import subprocess

    process = WarmProcess(target, env, cwd)
    out, err = process.communicate(timeout)
    return subprocess.CompletedProcess([sys.executable, *target], process.returncode or 0, out, err)
