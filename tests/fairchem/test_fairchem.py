"""The second facade: today's fairchem API, names and behaviour, over real Gloo ranks."""

from __future__ import annotations

import logging
import os
import textwrap

import pytest
import torch
from support import api_spec
from support.warm import WarmProcess

from distcomm import ConfigurationError, distutils, fairchem

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def documented() -> tuple[list[str], dict[str, str]]:
    return api_spec.documented("fairchem-api.rst")


def test_exactly_todays_names() -> None:
    attributes, functions = documented()
    assert len(attributes) == 3 and len(functions) == 19
    assert sorted(fairchem.__all__) == sorted(attributes + list(functions))
    assert fairchem.CURRENT_DEVICE_TYPE_STR == "CURRRENT_DEVICE_TYPE" and fairchem.DISTRIBUTED_PORT == 13356


@pytest.mark.parametrize("name", sorted(documented()[1]))
def test_same_parameters_and_defaults_as_today(name: str) -> None:
    api_spec.check_signature(fairchem, name, documented()[1][name])


def test_shared_behaviour_is_written_once() -> None:
    for name in ("all_reduce", "all_gather", "broadcast", "gather_objects", "get_rank", "synchronize", "setup_env_local"):
        assert getattr(fairchem, name) is getattr(distutils, name), name


def test_os_environ_get_or_throw(monkeypatch) -> None:
    monkeypatch.delenv("DISTCOMM_NOT_SET", raising=False)
    with pytest.raises(RuntimeError, match="^Could not find DISTCOMM_NOT_SET in ENV variables$"):
        fairchem.os_environ_get_or_throw("DISTCOMM_NOT_SET")
    monkeypatch.setenv("DISTCOMM_NOT_SET", "x")
    assert fairchem.os_environ_get_or_throw("DISTCOMM_NOT_SET") == "x"


def test_get_init_method(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol: python-hostlist expands the node list
    assert fairchem.get_init_method("tcp", 4, 1, "node[07-08]") == "tcp://node07:13356?world_size=4&rank=1"
    alone = fairchem.get_init_method("tcp", 1, node_list="solo")
    assert alone.startswith("tcp://solo:") and not alone.startswith("tcp://solo:13356?")
    assert fairchem.get_init_method("file", 2, 0, filename="/shared/f") == "file:///shared/f?world_size=2&rank=0"
    assert fairchem.get_init_method("file", None).startswith("file:///")
    with pytest.raises(ValueError, match="^Invalid init_method: env$"):
        fairchem.get_init_method("env", 2)


def test_setup_env_local_multi_gpu(monkeypatch) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK"):
        monkeypatch.setenv(name, "")
    fairchem.setup_env_local_multi_gpu(3, 29511)
    assert [os.environ[n] for n in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK")] == ["localhost", "29511", "3", "3"]
    fairchem.setup_env_local_multi_gpu(0, 1, address="10.0.0.1")
    assert os.environ["MASTER_ADDR"] == "10.0.0.1"


def test_devices_on_the_cpu(monkeypatch, caplog) -> None:
    monkeypatch.delenv(fairchem.CURRENT_DEVICE_TYPE_STR, raising=False)
    with caplog.at_level(logging.WARNING, logger="distcomm"):
        guess = fairchem.get_device_for_local_rank()
    assert guess == ("cuda:0" if torch.cuda.is_available() else "cpu") and "never called" in caplog.text
    fairchem.assign_device_for_local_rank(True, 5)
    assert fairchem.get_device_for_local_rank() == "cpu" and os.environ[fairchem.CURRENT_DEVICE_TYPE_STR] == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="no CUDA GPU is available"):
            fairchem.assign_device_for_local_rank(False, 0)
    monkeypatch.setenv(fairchem.CURRENT_DEVICE_TYPE_STR, "tpu")
    with pytest.raises(RuntimeError):  # torch refuses the device string, or it is an unsupported type
        fairchem.get_device_for_local_rank()


@needs_cuda
def test_devices_on_a_gpu(monkeypatch) -> None:
    monkeypatch.delenv(fairchem.CURRENT_DEVICE_TYPE_STR, raising=False)
    fairchem.assign_device_for_local_rank(False, 0)
    assert os.environ[fairchem.CURRENT_DEVICE_TYPE_STR] == "cuda" and fairchem.get_device_for_local_rank() == "cuda:0"


def test_cleanup_gp_ray_without_ray(monkeypatch) -> None:
    monkeypatch.setenv(fairchem.CURRENT_DEVICE_TYPE_STR, "cpu")
    fairchem.cleanup_gp_ray()
    assert fairchem.CURRENT_DEVICE_TYPE_STR not in os.environ and not fairchem.initialized()


def todays_names(comm):
    r = comm.rank
    return (
        fairchem.get_rank(), fairchem.get_world_size(), fairchem.all_reduce(r + 1), fairchem.gather_objects(r),
        [a.tolist() for a in fairchem.all_gather([r, r])],
    )  # fmt: skip


def test_todays_names_on_real_ranks(dist_world) -> None:
    assert dist_world(2).run(todays_names) == [(0, 2, 3, [0, 1], [[0, 0], [1, 1]]), (1, 2, 3, None, [[0, 0], [1, 1]])]


RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from distcomm import fairchem
    config = {"world_size": 2, "distributed_backend": "gloo", "cpu": True, "init_method": "file",
              "shared_file_dir": sys.argv[1], "timeout": 1, "submit": False, "model": "ignored"}
    fairchem.setup(config)
    total = fairchem.all_reduce(fairchem.get_rank() + 1)
    device = fairchem.get_device_for_local_rank()
    fairchem.cleanup_gp_ray()
    print(json.dumps([total, device, fairchem.initialized()]))
    """
)


def test_setup_through_a_shared_file(tmp_path) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK")}
    ranks = [
        WarmProcess(["-c", RANK_SCRIPT, str(tmp_path)], env={**environ, "RANK": str(r)})
        for r in range(2)
    ]  # fmt: skip
    outputs = [rank.communicate(timeout=90) for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), [err for _, err in outputs]
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == ['[3, "cpu", false]'] * 2


def test_bad_configs_are_configuration_errors(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="as a dict, got NoneType"):
        fairchem.setup(None)
    with pytest.raises(ConfigurationError, match="needs shared_file_dir"):
        fairchem.setup({"world_size": 1, "init_method": "file"})
    with pytest.raises(ConfigurationError, match="needs array_job_num"):
        fairchem.setup({"world_size": 2, "init_method": "file", "shared_file_dir": str(tmp_path), "submit": True})
