"""``python -m distcomm info``: the report, in a real (warm) process, for each launcher."""

import json
import re
import subprocess

import pytest
from support import warm
from support.launchers import base_environment

pytestmark = pytest.mark.integration  # real jobs or subprocesses: left out of the fast loop


def info(extra: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**base_environment(), **extra}
    return warm.run(["-m", "distcomm", "info", *flags], env=env, timeout=60)


def test_text_report_of_a_lone_process() -> None:
    done = info({})
    assert done.returncode == 0, done.stderr
    assert "torch" in done.stdout and "gloo: yes" in done.stdout
    # Columns are as wide as the longest label, which depends on the machine's variables: match any spacing.
    for label, value in (("CURRRENT_DEVICE", "(not set)"), ("launcher", "single"), ("world_size", "1")):
        assert re.search(rf"^\s*{label}\s{{2,}}{re.escape(value)}\s*$", done.stdout, re.MULTILINE), (label, done.stdout)


def test_json_report_under_torchrun_variables() -> None:
    env = {"MASTER_ADDR": "node7", "MASTER_PORT": "29500", "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "CURRRENT_DEVICE": "cpu"}
    report = json.loads(info(env, "--json").stdout)
    assert report["launcher"] == "torchrun" and report["CURRRENT_DEVICE"] == "cpu"
    assert report["plan"] | {"backend": None} == {
        "rank": 3, "world_size": 4, "local_rank": 1, "backend": None, "init_method": "env://",
        "master_addr": "node7", "master_port": "29500",
    }  # fmt: skip
    assert report["environment"]["MASTER_ADDR"] == "node7" and set(report["backends"]) == {"gloo", "nccl", "mpi"}


def test_a_broken_launch_environment_is_explained() -> None:
    report = json.loads(info({"SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1", "PATH": "/nonexistent"}, "--json").stdout)
    assert report["launcher"] == "slurm" and "SLURM_NNODES is not set" in report["plan"]["error"]
