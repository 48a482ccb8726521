"""``python -m distcomm info``: what this process would do in a job, and why.

In the spirit of ``accelerate env`` and ``torch.utils.collect_env``: versions, the
backends this torch has, the devices, the launcher detected from the environment and
what it implies (rank, world size, local rank, rendezvous), and the variables that
matter. Paste it into a bug report.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

import distcomm
from distcomm.environment.backend_choice import BACKENDS, backend_available
from distcomm.environment.config import DistributedConfig
from distcomm.environment.devices import CURRENT_DEVICE_STR
from distcomm.errors import DistCommError
from distcomm.launch.agent import RESTART_VARIABLE
from distcomm.launch.launcher import detect_launcher, plan_launch
from distcomm.wire.rejoin import JOIN_VARIABLE, LAUNCHER_VARIABLE

RELEVANT_PREFIXES = ("MASTER_", "SLURM_", "OMPI_COMM_WORLD_", "LSB_", "NCCL_", "GLOO_", "TORCH_", "TORCHELASTIC_")
RELEVANT_NAMES = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES", CURRENT_DEVICE_STR, "DISTCOMM_MASTER_PORT",
    LAUNCHER_VARIABLE, JOIN_VARIABLE, RESTART_VARIABLE,  # set by python -m distcomm run
)  # fmt: skip


def _implied_world_size(launcher: str, environ: Mapping[str, str]) -> int:
    keys = {"slurm": "SLURM_NTASKS", "lsf": "OMPI_COMM_WORLD_SIZE", "torchrun": "WORLD_SIZE"}
    value = environ.get(keys.get(launcher, ""), "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def collect(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The report as a dict (``--json`` prints it as it is)."""
    environ = os.environ if environ is None else environ
    launcher = detect_launcher(environ)
    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {
        "distcomm": distcomm.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": {name: backend_available(name) for name in BACKENDS},
        "cuda_available": cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda_version": torch.version.cuda,
        CURRENT_DEVICE_STR: environ.get(CURRENT_DEVICE_STR),
        "launcher": launcher,
        "process_group_initialized": dist.is_available() and dist.is_initialized(),
    }
    config = DistributedConfig(
        world_size=_implied_world_size(launcher, environ),
        submit=launcher == "slurm",
        summit=launcher == "lsf",
        cpu=not cuda,
    )
    try:
        plan = plan_launch(config, environ)
        address = plan.environment.get("MASTER_ADDR", environ.get("MASTER_ADDR"))
        port = plan.environment.get("MASTER_PORT", environ.get("MASTER_PORT"))
        if plan.init_method.startswith("tcp://"):
            address, _, port = plan.init_method.removeprefix("tcp://").rpartition(":")
        elif plan.launcher == "single":
            address, port = "localhost", "a free port, chosen by setup()"
        report["plan"] = {
            "rank": plan.rank,
            "world_size": plan.world_size,
            "local_rank": plan.local_rank,
            "backend": plan.backend,
            "init_method": plan.init_method,
            "master_addr": address,
            "master_port": port,
        }
    except (DistCommError, ValueError) as error:
        report["plan"] = {"error": str(error)}
    report["environment"] = {
        k: v for k, v in sorted(environ.items()) if k in RELEVANT_NAMES or k.startswith(RELEVANT_PREFIXES)
    }
    return report


def render(report: dict[str, Any]) -> str:
    """The report as aligned text."""
    yes_no = {True: "yes", False: "no"}
    rows = [
        ("distcomm", report["distcomm"]),
        ("torch", report["torch"]),
        ("python", f"{report['python']} on {report['platform']}"),
        ("backends", ", ".join(f"{k}: {yes_no[v]}" for k, v in report["backends"].items())),
        ("CUDA", f"{yes_no[report['cuda_available']]} (CUDA {report['cuda_version']})"),
        ("devices", ", ".join(f"cuda:{i} {n}" for i, n in enumerate(report["devices"])) or "cpu only"),
        (CURRENT_DEVICE_STR, report[CURRENT_DEVICE_STR] or "(not set)"),
        ("launcher", report["launcher"]),
        ("process group", "initialized" if report["process_group_initialized"] else "not initialized"),
    ]
    rows += [(f"  {k}", v) for k, v in report["plan"].items()]
    rows += [("environment", "" if report["environment"] else "(no launcher variables)")]
    rows += [(f"  {k}", v) for k, v in report["environment"].items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
