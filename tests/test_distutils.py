"""The legacy facade: the documented names and signatures, and their behaviour at every world size."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from support import api_spec

import distcomm
from distcomm import ConfigurationError, DistCommError, InvalidArgumentError, distutils
from distcomm.communicator import Handle


def documented() -> tuple[list[str], dict[str, str]]:
    return api_spec.documented("distutils-api.rst")


def test_exactly_the_documented_names() -> None:
    attributes, functions = documented()
    assert len(attributes) == 3 and len(functions) == 16
    assert sorted(distutils.__all__) == sorted(attributes + list(functions))
    assert distutils.DISTRIBUTED_PORT == 13356 and distutils.CURRENT_DEVICE_STR == "CURRRENT_DEVICE"
    assert distutils.T.__name__ == "T"


@pytest.mark.parametrize("name", sorted(documented()[1]))
def test_same_parameters_and_defaults_as_documented(name: str) -> None:
    api_spec.check_signature(distutils, name, documented()[1][name])


def test_os_environ_get_or_throw(monkeypatch) -> None:
    monkeypatch.setenv("DISTCOMM_TEST_VAR", "x")
    assert distutils.os_environ_get_or_throw("DISTCOMM_TEST_VAR") == "x"
    monkeypatch.delenv("DISTCOMM_TEST_VAR")
    with pytest.raises(RuntimeError, match="DISTCOMM_TEST_VAR"):
        distutils.os_environ_get_or_throw("DISTCOMM_TEST_VAR")


def legacy_calls(comm) -> dict[str, Any]:
    """Every legacy function, with inputs that depend on the rank; values checked here."""
    r, n = distutils.get_rank(), distutils.get_world_size()
    assert (r, n) == (comm.rank, comm.world_size)
    assert distutils.is_master() == (r == 0)
    assert distutils.initialized() == dist.is_initialized()
    distutils.synchronize()
    out: dict[str, Any] = {}
    tensor = torch.tensor([r + 1.0])
    assert distutils.all_reduce(tensor) is tensor and tensor.item() == n * (n + 1) / 2
    out["number"] = distutils.all_reduce(r + 1.0)
    out["list"] = distutils.all_reduce([1, 2])
    out["one item list"] = distutils.all_reduce([r])
    out["average"] = distutils.all_reduce(np.array([2.0, 4.0]), average=True)
    out["int tensor average"] = distutils.all_reduce(torch.tensor([r]), average=True)
    out["gather tensor"] = distutils.all_gather(torch.tensor([r]))
    out["gather number"] = distutils.all_gather(float(r))
    out["gather list"] = distutils.all_gather([r, r], device="cpu")
    out["gather objects"] = distutils.gather_objects({"rank": r})
    bcast = torch.tensor([float(r)])
    assert distutils.broadcast(bcast, src=n - 1) is None and bcast.item() == n - 1
    handle = distutils.broadcast(torch.tensor([float(r)]), 0, async_op=True)
    assert isinstance(handle, Handle) and handle.wait().item() == 0
    objects = [r, {"k": r}]
    assert distutils.broadcast_object_list(objects, src=0) is None and objects == [0, {"k": 0}]
    assert distutils.all_reduce(1, group=dist.group.WORLD) == n
    with pytest.raises(InvalidArgumentError, match="all_reduce cannot take str"):
        distutils.all_reduce("text")
    with pytest.raises(InvalidArgumentError, match="broadcast fills a tensor in place"):
        distutils.broadcast([1.0], 0)
    return out


def check_legacy_results(out: dict[str, Any], rank: int, n: int) -> None:
    assert type(out["number"]) is float and out["number"] == n * (n + 1) / 2
    assert isinstance(out["list"], np.ndarray) and out["list"].tolist() == [n, 2 * n]
    assert type(out["one item list"]) is int and out["one item list"] == n * (n - 1) // 2
    assert isinstance(out["average"], np.ndarray) and out["average"].tolist() == [2.0, 4.0]
    assert out["int tensor average"].dtype == torch.float32 and out["int tensor average"].item() == (n - 1) / 2
    assert isinstance(out["gather tensor"], list) and [t.item() for t in out["gather tensor"]] == list(range(n))
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in out["gather number"])
    assert [a.tolist() for a in out["gather list"]] == [[i, i] for i in range(n)]
    assert out["gather objects"] == ([{"rank": i} for i in range(n)] if rank == 0 else None)


def test_legacy_functions_single_process() -> None:
    check_legacy_results(legacy_calls(distcomm.get_communicator()), 0, 1)


@pytest.mark.parametrize("world_size", [1, 3])
def test_legacy_functions_on_real_ranks(dist_world, world_size: int) -> None:
    for rank, out in enumerate(dist_world(world_size).run(legacy_calls)):
        check_legacy_results(out, rank, world_size)


def legacy_subgroup(comm):
    group = dist.new_group([1, 2])
    if comm.rank == 0:
        return None
    return distutils.all_reduce(comm.rank, group=group), distutils.all_gather(comm.rank, group=group)[0].item()


def test_group_arguments_reach_other_groups(dist_world) -> None:
    assert dist_world(3).run(legacy_subgroup) == [None, (3, 1), (3, 1)]


def unset(monkeypatch, *names: str) -> None:
    """Unset variables and have monkeypatch restore them, also ones the code under test sets."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture
def no_launcher(monkeypatch):
    unset(monkeypatch, "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    yield
    distutils.cleanup()


def test_setup_and_cleanup_of_a_lone_process(no_launcher) -> None:
    config = {"world_size": 1, "distributed_backend": "gloo", "cpu": True, "timeout": 0.5, "model": "ignored"}
    distutils.setup(config)
    assert distutils.initialized() and config["local_rank"] == 0
    comm = distcomm.get_communicator()
    assert isinstance(comm, distcomm.TorchDistCommunicator) and comm.backend == "gloo"
    gathered = distutils.all_gather(3)  # the facade's documented kind: a list of 0-d NumPy arrays, one per rank
    assert [(type(a).__name__, a.shape, a.item()) for a in gathered] == [("ndarray", (), 3)] and distutils.get_world_size() == 1
    with pytest.raises(DistCommError, match="already initialized"):
        distutils.setup(config)
    distutils.cleanup()
    assert not distutils.initialized() and isinstance(distcomm.get_communicator(), distcomm.LocalCommunicator)
    distutils.cleanup()  # harmless twice


def test_setup_of_many_ranks_without_a_launcher_is_a_clear_error(no_launcher) -> None:
    with pytest.raises(ConfigurationError, match="world_size=4 but no launcher set MASTER_ADDR.*torchrun"):
        distutils.setup({"world_size": 4, "distributed_backend": "gloo"})
    assert not distutils.initialized()


def test_device_assignment(monkeypatch, caplog) -> None:
    unset(monkeypatch, distutils.CURRENT_DEVICE_STR, "CUDA_VISIBLE_DEVICES")
    with caplog.at_level(logging.WARNING, logger="distcomm"):
        guess = distutils.get_device_for_local_rank()
    assert guess == ("cuda" if torch.cuda.is_available() else "cpu") and "CURRRENT_DEVICE is not set" in caplog.text
    distutils.assign_device_for_local_rank(True, 3)
    assert distutils.get_device_for_local_rank() == "cpu"


def test_setup_env_local(monkeypatch) -> None:
    unset(monkeypatch, "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK")
    distutils.setup_env_local()
    import os

    assert (os.environ["MASTER_ADDR"], os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("localhost", "0", "0")
    assert 0 < int(os.environ["MASTER_PORT"]) < 65536


def test_a_group_that_is_not_a_process_group_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgumentError, match="group must be a torch.distributed ProcessGroup.*got str"):
        distutils.all_gather(1.0, group="bogus")


@pytest.mark.parametrize("device", ["bogus", "meta", 3.5])
def test_a_bad_device_is_refused_before_anything_moves(device) -> None:
    from distcomm import InvalidArgumentError, LocalCommunicator, fairchem, use_communicator

    with use_communicator(LocalCommunicator()):
        with pytest.raises(InvalidArgumentError, match="device="):
            distutils.all_reduce([1, 2], device=device)
        with pytest.raises(InvalidArgumentError, match="device="):
            distutils.all_gather([1.0, 2.0], device=device)
        items = ["kept"]
        with pytest.raises(InvalidArgumentError, match="device="):
            fairchem.broadcast_object_list(items, 0, device=device)
        assert items == ["kept"]


def facade_with_a_meta_device(comm):
    from distcomm import InvalidArgumentError, fairchem, use_communicator

    with use_communicator(comm):
        try:
            fairchem.broadcast_object_list([comm.rank], 0, device="meta")
        except InvalidArgumentError as error:
            return str(error)
    return "accepted"


def test_a_meta_device_is_refused_on_every_rank(dist_world) -> None:
    messages = dist_world(2).run(facade_with_a_meta_device)
    assert all("holds no data" in m for m in messages), messages
