"""Launchers: SLURM, LSF, torchrun and a lone process, planned from the environment and run for real.

Plans are checked against fake environments (fast). Then real rank processes are
started as each launcher would start them. Where the machine allows it (root and
``ip netns``), ranks run inside private network namespaces, so the fixed SLURM and
LSF ports cannot collide with anything, and one test runs two "hosts" joined by a
virtual cable, so that the rendezvous really crosses hosts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from support import warm
from support.launchers import base_environment, fake_scontrol, netns_supported, reports, start_rank, two_hosts

from distcomm import CollectiveError, ConfigurationError, TorchDistCommunicator, distutils, plan_launch
from distcomm.launch.launcher import MissingEnvironmentError, detect_launcher, read_lsf_hostfile, slurm_hostnames

pytestmark = pytest.mark.integration  # real jobs or subprocesses: left out of the fast loop

NETNS = netns_supported()
needs_netns = pytest.mark.skipif(not NETNS, reason="needs root and 'ip netns' to make private network namespaces")


@pytest.fixture
def scontrol_dir(tmp_path: Path) -> Path:
    fake_scontrol(tmp_path, ["node1", "node2", "node3", "node4"])
    return tmp_path


def slurm_env(path: Path | str, **values: object) -> dict[str, str]:
    env = {"PATH": str(path), "SLURM_JOB_NODELIST": "node[1-4]", "SLURM_NNODES": "4"}
    env.update({k: str(v) for k, v in values.items()})
    return env


# ------------------------------------------------------------------- plans


def test_slurm_one_task_per_node(scontrol_dir: Path) -> None:
    env = slurm_env(scontrol_dir, SLURM_NTASKS=4, SLURM_NODEID=2, SLURM_PROCID=2, SLURM_LOCALID=0)
    plan = plan_launch({"submit": True, "world_size": 8, "distributed_backend": "gloo"}, env)
    assert (plan.launcher, plan.rank, plan.local_rank, plan.world_size) == ("slurm", 4, 0, 8)
    assert plan.init_method == "tcp://node1:13356" and plan.backend == "gloo"
    assert (scontrol_dir / "scontrol.log").read_text().strip() == "show hostnames node[1-4]"


def test_slurm_many_tasks_per_node_prefers_the_step_node_list(scontrol_dir: Path) -> None:
    env = slurm_env(scontrol_dir, SLURM_STEP_NODELIST="node[3-4]", SLURM_NNODES=2, SLURM_NTASKS_PER_NODE="4(x2)",
                    SLURM_PROCID=5, SLURM_LOCALID=1)  # fmt: skip
    plan = plan_launch({"submit": True, "world_size": 8, "distributed_backend": "gloo"}, env)
    assert (plan.rank, plan.local_rank) == (5, 1)
    assert "show hostnames node[3-4]" in (scontrol_dir / "scontrol.log").read_text()


def test_slurm_without_scontrol_uses_python_hostlist(tmp_path: Path) -> None:
    env = slurm_env(tmp_path, SLURM_JOB_NODELIST="gpu-[07-09],cpu1", SLURM_NNODES=4, SLURM_NTASKS=4,
                    SLURM_NODEID=0, SLURM_PROCID=0, SLURM_LOCALID=0)  # fmt: skip
    assert plan_launch({"submit": True, "world_size": 4, "cpu": True}, env).init_method == "tcp://gpu-07:13356"
    assert slurm_hostnames("gpu-[07-09],cpu1", str(tmp_path)) == ["gpu-07", "gpu-08", "gpu-09", "cpu1"]


def test_slurm_without_scontrol_or_hostlist_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "hostlist", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'distcomm\[slurm\]'"):
        slurm_hostnames("node[1-2]", str(tmp_path))


@pytest.mark.parametrize(
    ("env", "world_size", "error", "message"),
    [({"SLURM_JOB_NODELIST": ""}, 4, ConfigurationError, "neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST"),
     ({"SLURM_NTASKS": 6}, 4, ConfigurationError, "SLURM_NTASKS=6 does not divide evenly over SLURM_NNODES=4"),
     ({"SLURM_NTASKS": 4, "SLURM_NODEID": 0}, 6, ConfigurationError, "world_size=6 must be divisible by SLURM_NNODES=4"),
     ({"SLURM_NTASKS_PER_NODE": 2, "SLURM_PROCID": 0, "SLURM_LOCALID": 0}, 4, ConfigurationError, "runs 2 tasks per node"),
     ({"SLURM_NTASKS_PER_NODE": 2}, 8, MissingEnvironmentError, "SLURM_PROCID is not set"),
     ({"SLURM_NTASKS": 4}, 4, RuntimeError, "SLURM_NODEID")],
)  # fmt: skip
def test_slurm_errors_are_clear(scontrol_dir: Path, env, world_size, error, message) -> None:
    with pytest.raises(error, match=message):
        plan_launch({"submit": True, "world_size": world_size, "cpu": True}, slurm_env(scontrol_dir, **env))


def test_slurm_port_can_be_moved(scontrol_dir: Path) -> None:
    env = slurm_env(scontrol_dir, SLURM_NTASKS=4, SLURM_NODEID=0, DISTCOMM_MASTER_PORT=4242)
    assert plan_launch({"submit": True, "world_size": 4, "cpu": True}, env).init_method == "tcp://node1:4242"
    with pytest.raises(ConfigurationError, match="is not a TCP port"):
        plan_launch({"submit": True, "world_size": 4, "cpu": True}, {**env, "DISTCOMM_MASTER_PORT": "http"})


def test_lsf_hostfile_skips_batch_and_login_nodes(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("batch3\nlogin1\nh41n09\nh41n09\nh36n01\n\n")
    assert read_lsf_hostfile(str(hostfile)) == ["h36n01", "h41n09"]
    env = {"OMPI_COMM_WORLD_SIZE": "12", "OMPI_COMM_WORLD_RANK": "7", "LSB_DJOB_HOSTFILE": str(hostfile)}
    plan = plan_launch({"summit": True, "world_size": 12, "distributed_backend": "gloo"}, env)
    assert (plan.launcher, plan.rank, plan.world_size, plan.init_method, plan.backend) == ("lsf", 7, 12, "env://", "gloo")
    assert plan.environment == {"MASTER_ADDR": "h36n01", "MASTER_PORT": "23456", "WORLD_SIZE": "12", "RANK": "7"}
    hostfile.write_text("batch1\nlogin2\n")
    with pytest.raises(ConfigurationError, match="names no compute host"):
        plan_launch({"summit": True}, env)


def test_torchrun_and_single_process_plans() -> None:
    env = {"MASTER_ADDR": "h", "MASTER_PORT": "29500", "RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "3"}
    plan = plan_launch({"world_size": 3, "cpu": True}, env)
    assert (plan.launcher, plan.rank, plan.local_rank, plan.init_method) == ("torchrun", 2, 0, "env://")
    with pytest.raises(ConfigurationError, match="started WORLD_SIZE=3 processes but the config says world_size=4"):
        plan_launch({"world_size": 4, "cpu": True}, env)
    assert plan_launch({"world_size": 1}, {}).launcher == "single"


def test_a_worker_of_distcomm_run_under_srun_takes_its_agents_ranks(scontrol_dir: Path) -> None:
    # srun started one agent per node; its workers inherit SLURM's variables (the node's task).
    env = slurm_env(scontrol_dir, SLURM_NTASKS=2, SLURM_NODEID=1, SLURM_PROCID=1, SLURM_LOCALID=0, DISTCOMM_LAUNCHER="distcomm",
                    MASTER_ADDR="node1", MASTER_PORT="29400", RANK="6", LOCAL_RANK="2", WORLD_SIZE="8")  # fmt: skip
    plan = plan_launch({"submit": True, "world_size": 8, "cpu": True}, env)
    assert (plan.launcher, plan.rank, plan.local_rank, plan.init_method) == ("torchrun", 6, 2, "env://")
    assert detect_launcher(env) == "torchrun"


def test_detect_launcher() -> None:
    assert detect_launcher({"SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1"}) == "slurm"
    assert detect_launcher({"OMPI_COMM_WORLD_RANK": "0", "LSB_DJOB_HOSTFILE": "/h"}) == "lsf"
    assert detect_launcher({"MASTER_ADDR": "h"}) == "torchrun"
    assert detect_launcher({}) == "single"


def test_a_taken_rendezvous_port_is_a_clear_error_not_a_hang(monkeypatch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(CollectiveError, match=f"MASTER_PORT={port}.*already in use by another process"):
            distutils.setup({"world_size": 1, "distributed_backend": "gloo", "timeout": 0.2})
    assert not dist.is_initialized()


# ----------------------------------------------------------- real processes


def isolated(env: dict[str, str], port_variable: bool = True) -> tuple[str | None, dict[str, str]]:
    """Where ranks run: a private namespace (fixed ports as specified), else the host with a moved port."""
    if NETNS:
        return None, {**env, "GLOO_SOCKET_IFNAME": "lo"}
    from distcomm.launch.launcher import find_free_port

    return None, {**env, "DISTCOMM_MASTER_PORT": str(find_free_port())} if port_variable else env


@pytest.fixture
def private_namespace():
    if not NETNS:
        yield None
        return
    from support.launchers import namespace

    with namespace() as name:
        yield name


@pytest.mark.parametrize("layout", ["one task per node", "two tasks per node"])
def test_slurm_job_of_four_ranks(tmp_path: Path, private_namespace, layout: str) -> None:
    fake_scontrol(tmp_path, ["localhost"] * 4)
    _, env = isolated({**base_environment(), "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "n[1-4]"})
    processes = []
    for rank in range(4):
        if layout == "one task per node":
            slurm = {"SLURM_NNODES": 4, "SLURM_NTASKS": 4, "SLURM_NODEID": rank, "SLURM_PROCID": rank, "SLURM_LOCALID": 0}
        else:
            slurm = {"SLURM_NNODES": 2, "SLURM_NTASKS_PER_NODE": 2, "SLURM_NODEID": rank // 2, "SLURM_PROCID": rank, "SLURM_LOCALID": rank % 2}
        config = {"submit": True, "world_size": 4, "distributed_backend": "gloo", "cpu": True, "timeout": 1}
        rank_env = {**env, **{k: str(v) for k, v in slurm.items()}}
        processes.append(start_rank(config, rank_env, private_namespace))
    port = env.get("DISTCOMM_MASTER_PORT", "13356")
    for rank, report in enumerate(reports(processes)):
        local = 0 if layout == "one task per node" else rank % 2
        assert (report["rank"], report["world_size"], report["local_rank"], report["sum"]) == (rank, 4, local, 10)
        assert report["written_back"] == {"init_method": f"tcp://localhost:{port}", "rank": rank, "local_rank": local}
        assert report["ranks_seen"] == [0, 1, 2, 3] and report["backend"] == "gloo"


def test_lsf_job_of_four_ranks(tmp_path: Path, private_namespace) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("batch1\nlogin1\nlocalhost\nlocalhost\nzz-node\n")
    _, env = isolated({**base_environment(), "LSB_DJOB_HOSTFILE": str(hostfile), "OMPI_COMM_WORLD_SIZE": "4"})
    config = {"summit": True, "world_size": 4, "distributed_backend": "gloo", "cpu": True, "timeout": 1}
    processes = [
        start_rank(config, {**env, "OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_LOCAL_RANK": str(r)}, private_namespace)
        for r in range(4)
    ]
    for rank, report in enumerate(reports(processes)):
        assert (report["rank"], report["world_size"], report["sum"], report["written_back"]["local_rank"]) == (rank, 4, 10, rank)


def test_torchrun_job_of_three_ranks(tmp_path: Path) -> None:
    config = '{"world_size": 3, "distributed_backend": "gloo", "cpu": true, "timeout": 1}'
    # --standalone: the agent's rendezvous binds port 0, so parallel tests cannot collide.
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
         str(Path(__file__).parents[1] / "support" / "launch_rank.py"), config],
        env={**base_environment(), "REPORT_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for rank in range(3):
        report = json.loads((tmp_path / f"report-{rank}.json").read_text())
        assert (report["rank"], report["world_size"], report["sum"], report["ranks_seen"]) == (rank, 3, 6, [0, 1, 2])
        assert report["written_back"]["local_rank"] == rank == report["local_rank"]


@needs_netns
def test_slurm_rendezvous_across_two_hosts(tmp_path: Path) -> None:
    with two_hosts() as ((ns_a, addr_a, if_a), (ns_b, addr_b, if_b)):
        fake_scontrol(tmp_path, [addr_a, addr_b])
        env = {**base_environment(), "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node[a,b]",
               "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "2"}  # fmt: skip
        config = {"submit": True, "world_size": 4, "distributed_backend": "gloo", "cpu": True, "timeout": 1}
        processes = []
        for rank in range(4):
            node, ns, interface = (0, ns_a, if_a) if rank < 2 else (1, ns_b, if_b)
            rank_env = {**env, "SLURM_NODEID": str(node), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % 2),
                        "GLOO_SOCKET_IFNAME": interface}  # fmt: skip
            processes.append(start_rank(config, rank_env, ns))
        for rank, report in enumerate(reports(processes)):
            assert (report["rank"], report["sum"], report["ranks_seen"]) == (rank, 10, [0, 1, 2, 3])
            assert report["written_back"]["init_method"] == f"tcp://{addr_a}:13356"


LONE_SETUP = """
import sys, psutil, torch.distributed as dist
from distcomm import distutils
config = {"world_size": 1, "distributed_backend": "gloo"}
if len(sys.argv) > 1:
    config["init_method"] = sys.argv[1]
distutils.setup(config)
listening = [c.laddr for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
store = dist.distributed_c10d._get_default_store()
print(getattr(store, "_underlying_non_prefix_store", store).__class__.__name__, sorted({a.ip for a in listening}))
distutils.cleanup()
"""


@pytest.mark.parametrize("init_method", [None, "env://", "env:///", "env://?x=1"])
def test_a_lone_process_opens_no_rendezvous_to_the_network(init_method: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = warm.run(["-c", LONE_SETUP] + ([init_method] if init_method else []), env=env)
    assert result.returncode == 0, result.stderr
    store, addresses = result.stdout.split(" ", 1)
    assert "FileStore" in store  # no TCP store at all
    assert "0.0.0.0" not in addresses and "'::'" not in addresses  # nothing listens on every interface


SETUP_AGAIN = """
import os, time
from distcomm import ConfigurationError, distutils
distutils.setup({"world_size": 1, "distributed_backend": "gloo"})
distutils.cleanup()
left = sorted(name for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK") if name in os.environ)
started = time.monotonic()
try:
    distutils.setup({"world_size": 2, "distributed_backend": "gloo"})
except ConfigurationError as error:
    print(left, round(time.monotonic() - started) < 5, "no launcher set MASTER_ADDR" in str(error))
"""


def test_cleanup_takes_back_what_setup_exported() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = warm.run(["-c", SETUP_AGAIN], env=env)
    assert result.stdout.strip() == "[] True True", result.stderr


def test_a_rendezvous_file_in_a_missing_directory_is_refused_at_once(tmp_path) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="which does not exist"):
        TorchDistCommunicator.init("gloo", rank=0, world_size=2, init_method=f"file://{tmp_path}/missing/store", timeout=60)
    assert time.monotonic() - started < 5


def test_init_refuses_a_world_size_the_launcher_did_not_start(monkeypatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigurationError, match="WORLD_SIZE=2 processes but world_size=4"):
        TorchDistCommunicator.init("gloo", rank=0, world_size=4, timeout=60)
