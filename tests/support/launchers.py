"""Helpers for launcher tests: fake launcher environments, private network namespaces, rank processes."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from support.warm import WarmProcess

RANK_SCRIPT = Path(__file__).with_name("launch_rank.py")
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "CURRRENT_DEVICE")
_names = itertools.count()


def base_environment() -> dict[str, str]:
    """This process's environment without any launcher's variables."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_VARIABLES and not k.startswith(("SLURM_", "OMPI_", "LSB_", "PYTEST_"))
    }


def fake_scontrol(directory: Path, hosts: list[str]) -> Path:
    """An ``scontrol`` that answers ``show hostnames LIST`` with ``hosts`` and logs its arguments."""
    script = directory / "scontrol"
    log = directory / "scontrol.log"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        '[ "$1" = show ] && [ "$2" = hostnames ] || exit 2\n'
        + "".join(f"echo {host}\n" for host in hosts)
    )
    script.chmod(0o755)
    return script


def netns_supported() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        with namespace() as name:
            return bool(name)
    return False


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """A private network namespace with loopback up: its own ports, so fixed ports cannot collide."""
    name = f"dc{os.getpid()}x{next(_names)}"
    _ip("netns", "add", name)
    try:
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[tuple[str, str, str], tuple[str, str, str]]]:
    """Two namespaces joined by a veth pair: ((namespace, address, interface), ...) for each host."""
    with namespace() as first, namespace() as second:
        subnet = 200 + next(_names) % 50
        ends = (f"{first}a", f"{second}b")
        _ip("link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
        hosts = []
        for ns, end, host in ((first, ends[0], 1), (second, ends[1], 2)):
            _ip("link", "set", end, "netns", ns)
            address = f"10.{subnet}.77.{host}"
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", end)
            _ip("netns", "exec", ns, "ip", "link", "set", end, "up")
            hosts.append((ns, address, end))
        yield hosts[0], hosts[1]


def start_rank(config: dict, env: dict[str, str], netns: str | None = None) -> WarmProcess:
    """``python launch_rank.py CONFIG`` with ``env``, inside namespace ``netns`` where given (a warm process)."""
    return WarmProcess([str(RANK_SCRIPT), json.dumps(config)], env=env, netns=netns)


def reports(processes: list[WarmProcess], timeout: float = 90) -> list[dict]:
    """Each rank's JSON report, in start order; fails with the ranks' output when one fails."""
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            lines = [line for line in out.splitlines() if line.startswith("REPORT ")]
            assert process.returncode == 0 and lines, f"rank failed ({process.returncode}):\n{out}\n{err}"
            results.append(json.loads(lines[-1].removeprefix("REPORT ")))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results
