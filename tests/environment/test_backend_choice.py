"""Which backend to take, and which this build of torch has."""

from __future__ import annotations

import torch

from distcomm.environment.backend_choice import BACKENDS, backend_available, default_backend


def test_the_cpu_or_a_machine_without_cuda_takes_gloo() -> None:
    assert default_backend(cpu=True) == "gloo"
    assert default_backend() == ("nccl" if torch.cuda.is_available() and backend_available("nccl") else "gloo")


def test_gloo_is_available_and_unknown_backends_are_not() -> None:
    assert backend_available("gloo") and not backend_available("smoke-signals") and set(BACKENDS) == {"nccl", "gloo", "mpi"}
