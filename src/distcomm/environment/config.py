"""``DistributedConfig``: the validated launch configuration that the legacy dict maps onto."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from distcomm.environment.backend_choice import BACKENDS, default_backend
from distcomm.errors import ConfigurationError

RENDEZVOUS_SCHEMES = ("env://", "tcp://", "file://")

# Legacy dict key -> field name; the legacy spellings are kept on purpose.
LEGACY_KEYS = {
    "world_size": "world_size",
    "distributed_backend": "backend",
    "cpu": "cpu",
    "timeout": "timeout_minutes",
    "submit": "submit",
    "summit": "summit",
    "use_cuda_visibile_devices": "use_cuda_visible_devices",
    "init_method": "init_method",
    "rank": "rank",
    "local_rank": "local_rank",
}


def _fail(name: str, value: Any, allowed: str) -> ConfigurationError:
    return ConfigurationError(f"invalid distributed config: {name}={value!r}; {allowed}")


def _strict_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(name, value, f"it must be an int of at least {minimum}")


def _check_world_size(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    _strict_int(attribute.name, value, 1)


def _check_optional_rank(_: Any, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None:
        _strict_int(attribute.name, value, 0)


def _check_backend(_: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and value not in BACKENDS:
        raise _fail("distributed_backend", value, f"use one of {', '.join(BACKENDS)}")


def _check_timeout(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _fail("timeout", value, "it is in minutes and must be a positive number (fractions such as 0.5 are fine)")


def _check_bool(_: Any, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise _fail(attribute.name, value, "it must be true or false")


def _check_init_method(_: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith(RENDEZVOUS_SCHEMES):
        raise _fail("init_method", value, f"it must start with {', '.join(RENDEZVOUS_SCHEMES)}")
    if value.startswith("tcp://"):
        host, _, port = value.removeprefix("tcp://").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _fail("init_method", value, "a tcp:// rendezvous needs a host and a port: tcp://HOST:PORT")
    if value.startswith("file://") and value == "file://":
        raise _fail("init_method", value, "a file:// rendezvous needs a path: file:///shared/dir/rendezvous")


def _normalize_backend(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


@attrs.frozen(kw_only=True)
class DistributedConfig:
    """How to start a job: every key of the legacy config dict, validated up front.

    Invalid values raise :class:`~distcomm.ConfigurationError` naming the key and
    what is allowed, before any process group is created.
    """

    world_size: int = attrs.field(default=1, validator=_check_world_size)
    backend: str | None = attrs.field(default=None, converter=_normalize_backend, validator=_check_backend)
    """``None`` picks NCCL when CUDA is available and ``cpu`` is false, else Gloo."""
    cpu: bool = attrs.field(default=False, validator=_check_bool)
    timeout_minutes: float = attrs.field(default=30.0, validator=_check_timeout)
    submit: bool = attrs.field(default=False, validator=_check_bool)
    summit: bool = attrs.field(default=False, validator=_check_bool)
    use_cuda_visible_devices: bool = attrs.field(default=False, validator=_check_bool)
    init_method: str | None = attrs.field(default=None, validator=_check_init_method)
    rank: int | None = attrs.field(default=None, validator=_check_optional_rank)
    local_rank: int | None = attrs.field(default=None, validator=_check_optional_rank)

    def __attrs_post_init__(self) -> None:
        if self.rank is not None and self.rank >= self.world_size:
            raise _fail("rank", self.rank, f"it must be below world_size={self.world_size}")
        if self.backend == "nccl":
            if self.cpu:
                raise _fail("distributed_backend", "nccl", "NCCL needs GPUs but cpu is true: use 'gloo'")
            if not torch.cuda.is_available():
                raise _fail("distributed_backend", "nccl", "NCCL needs CUDA and none is available: use 'gloo'")
        if self.submit and self.summit:
            raise _fail("submit/summit", (True, True), "choose one launcher: SLURM (submit) or LSF (summit)")

    @property
    def timeout(self) -> datetime.timedelta:
        return datetime.timedelta(minutes=self.timeout_minutes)

    @property
    def resolved_backend(self) -> str:
        """The backend to use: the configured one, or NCCL/Gloo by the hardware."""
        if self.backend is not None:
            return self.backend
        return default_backend(cpu=self.cpu)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any] | DistributedConfig) -> DistributedConfig:
        """Read the legacy config dict (unknown keys are ignored, as callers pass whole job configs)."""
        if isinstance(config, DistributedConfig):
            return config
        if not isinstance(config, Mapping):
            raise ConfigurationError(
                f"the distributed config must be a dict-like mapping or a DistributedConfig, got {type(config).__name__}"
            )
        fields = {field: config[key] for key, field in LEGACY_KEYS.items() if key in config and config[key] is not None}
        return cls(**fields)
