"""DistributedConfig: the legacy dict maps onto it, and every bad value is refused by name."""

import datetime

import pytest
import torch

from distcomm import ConfigurationError, DistributedConfig


def test_legacy_dict_maps_on_and_unknown_keys_are_ignored() -> None:
    config = DistributedConfig.from_mapping(
        {"world_size": 8, "distributed_backend": "GLOO", "cpu": True, "timeout": 0.5, "submit": True,
         "use_cuda_visibile_devices": True, "init_method": "tcp://node1:13356", "optimizer": "adam"}
    )  # fmt: skip
    assert config.world_size == 8 and config.backend == "gloo" and config.cpu and config.submit
    assert config.timeout == datetime.timedelta(seconds=30) and config.use_cuda_visible_devices
    assert DistributedConfig.from_mapping(config) is config


def test_defaults_and_backend_choice() -> None:
    config = DistributedConfig()
    assert (config.world_size, config.timeout_minutes, config.submit, config.summit) == (1, 30.0, False, False)
    assert config.resolved_backend == ("nccl" if torch.cuda.is_available() else "gloo")
    assert DistributedConfig(cpu=True).resolved_backend == "gloo"


@pytest.mark.parametrize(
    ("values", "message"),
    [({"world_size": 0}, "world_size=0; it must be an int of at least 1"),
     ({"world_size": "2"}, "world_size='2'"),
     ({"world_size": True}, "world_size=True"),
     ({"distributed_backend": "carrier-pigeon"}, "distributed_backend='carrier-pigeon'; use one of nccl, gloo, mpi"),
     ({"distributed_backend": "nccl", "cpu": True}, "NCCL needs GPUs but cpu is true"),
     ({"timeout": -1}, "timeout=-1; it is in minutes and must be a positive number"),
     ({"timeout": 0}, "timeout=0"),
     ({"timeout": "30"}, "timeout='30'"),
     ({"world_size": 2, "rank": 2}, "rank=2; it must be below world_size=2"),
     ({"rank": -1}, "rank=-1"),
     ({"local_rank": 1.5}, "local_rank=1.5"),
     ({"cpu": "yes"}, "cpu='yes'; it must be true or false"),
     ({"submit": True, "summit": True}, "choose one launcher"),
     ({"init_method": "http://node:80"}, "it must start with env://, tcp://, file://"),
     ({"init_method": "tcp://node"}, "tcp://HOST:PORT"),
     ({"init_method": "tcp://node:99999"}, "tcp://HOST:PORT"),
     ({"init_method": "file://"}, "needs a path")],
)  # fmt: skip
def test_every_bad_value_is_named_with_what_is_allowed(values, message) -> None:
    with pytest.raises(ConfigurationError, match="invalid distributed config: ") as info:
        DistributedConfig.from_mapping(values)
    assert message in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_nccl_without_cuda_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="NCCL needs CUDA and none is available: use 'gloo'"):
        DistributedConfig(backend="nccl")


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigurationError, match="dict-like mapping"):
        DistributedConfig.from_mapping(["world_size", 2])  # type: ignore[arg-type]
