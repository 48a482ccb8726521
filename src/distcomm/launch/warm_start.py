"""Run a script as ``python SCRIPT ARGS`` would, in a process forked from a server that has
already imported torch and distcomm (:mod:`distcomm.launch.forkserver_preload`).

Starting an interpreter and importing torch costs about 1.5 s of CPU. A warm worker is still
a real, separate process (its own pid, environment, working directory, sockets, ``atexit``
handlers and exit status), with the script run as ``__main__`` and its directory first on
``sys.path``; only the interpreter's start is shared. What it cannot do is change what torch
read when it was imported (``OMP_NUM_THREADS`` set by the script itself, for example): the
agent's ``--warm-start`` says so, and is off by default.

Used by :mod:`distcomm.launch.agent` (``python -m distcomm run --warm-start``) and by the tests'
warm processes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import NoReturn


def run_target(target: list[str], env: dict[str, str], cwd: str | None = None) -> NoReturn:
    """In this just-forked process: take ``env`` and ``cwd``, run ``target`` (``[script, *args]``,
    ``["-c", code, *args]`` or ``["-m", module, *args]``) as ``__main__``, run the ``atexit``
    handlers, and exit with the status Python would (an uncaught error: 1, printed)."""
    code = 0
    try:
        os.environ.clear()
        os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        if target[0] == "-c":
            sys.argv = ["-c", *target[2:]]
            sys.path.insert(0, "")
            exec(compile(target[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 (the caller's own code)
        elif target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(target)
            sys.path.insert(0, str(Path(target[0]).resolve().parent))
            runpy.run_path(target[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 (reported as Python reports an uncaught error)
        traceback.print_exc()
        code = 1
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
