"""Starting a job: :func:`setup` and :func:`cleanup` from any launcher's environment, launch plans, and
the active communicator that the :mod:`distcomm.distutils` facade forwards to."""

from distcomm.launch.launcher import (
    LaunchPlan,
    cleanup,
    detect_launcher,
    find_free_port,
    init_method_url,
    plan_launch,
    private_rendezvous,
    read_lsf_hostfile,
    setup,
    setup_env_local,
    slurm_hostnames,
)
from distcomm.launch.local_world import LocalWorld, spawn

__all__ = [
    "LocalWorld",
    "spawn",
    "LaunchPlan",
    "cleanup",
    "detect_launcher",
    "find_free_port",
    "init_method_url",
    "plan_launch",
    "private_rendezvous",
    "read_lsf_hostfile",
    "setup",
    "setup_env_local",
    "slurm_hostnames",
]
