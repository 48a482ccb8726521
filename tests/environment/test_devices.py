"""Device assignment: CURRRENT_DEVICE and CUDA_VISIBLE_DEVICES, and the fallback once CUDA is initialized."""

import logging

import pytest
import torch

from distcomm.environment import devices


@pytest.fixture(autouse=True)
def restore_variables(monkeypatch):
    for name in (devices.CURRENT_DEVICE_STR, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_cpu_assignment() -> None:
    devices.assign_device_for_local_rank(True, 5)
    assert devices.get_device_for_local_rank() == "cpu"
    import os

    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_gpu_assignment_before_cuda_is_initialized(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    devices.assign_device_for_local_rank(False, 3)
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and devices.get_device_for_local_rank() == "cuda"


def test_gpu_assignment_after_cuda_is_initialized_falls_back_with_a_warning(monkeypatch, caplog) -> None:
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    with caplog.at_level(logging.WARNING, logger="distcomm"):
        devices.assign_device_for_local_rank(False, 2)
    assert chosen == [2] and "CUDA_VISIBLE_DEVICES=2 has no effect" in caplog.text


def test_nccl_ranks_get_one_gpu_each_or_a_clear_error() -> None:
    assert devices.nccl_device(1, 2, {}) == torch.device("cuda", 1)
    assert devices.nccl_device(3, 1, {"CUDA_VISIBLE_DEVICES": "3"}) == torch.device("cuda", 0)  # narrowed to its own GPU
    with pytest.raises(devices.ConfigurationError, match=r"2 NCCL ranks on this machine but 1 GPU\(s\): local rank 1 would share cuda:0 with local rank\(s\) 0.*--nproc-per-node 1.*'gloo'"):
        devices.nccl_device(1, 1, {})
    with pytest.raises(devices.ConfigurationError, match=r"4 NCCL ranks on this machine but 2 GPU\(s\): local rank 0 would share cuda:0 with local rank\(s\) 2"):
        devices.nccl_device(0, 2, {"LOCAL_WORLD_SIZE": "4"})
    with pytest.raises(devices.ConfigurationError, match="sees none"):
        devices.nccl_device(0, 0, {})
