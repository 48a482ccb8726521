"""distcomm: one object to talk to the other ranks of a PyTorch job.

Inject a :class:`Communicator` into your trainer: a :class:`TorchDistCommunicator`
over torch.distributed in production, a :class:`LocalCommunicator` in single-process
tests. Every result's kind depends on the input, never on the world size.
"""

from distcomm import _moved
from distcomm.backends.backend import Backend
from distcomm.backends.handles import Handle
from distcomm.communicator import Communicator
from distcomm.debug.checked import CheckedCommunicator, CheckHook
from distcomm.debug.profiled import ProfiledCommunicator, ProfileHook
from distcomm.environment.config import DistributedConfig
from distcomm.errors import (
    ClosedCommunicatorError,
    CollectiveError,
    CollectiveMismatchError,
    ConfigurationError,
    DistCommError,
    ExcludedRankError,
    InconsistentInputError,
    InvalidArgumentError,
    ObjectDecodeError,
    RankDiedError,
    RankFailure,
    RankTimeoutError,
    TraceError,
    UnsafeObjectError,
)
from distcomm.helpers import all_ranks, any_rank, main_process_first, rank_zero_only, split_between_ranks
from distcomm.instrument.flight_recorder import FlightRecorder
from distcomm.instrument.hooks import Call, Hook, HookHandle
from distcomm.launch.active import get_communicator, set_communicator, use_communicator
from distcomm.launch.launcher import LaunchPlan, cleanup, plan_launch, setup
from distcomm.launch.local_world import LocalWorld, spawn
from distcomm.local import LocalCommunicator
from distcomm.resilience import Resilient
from distcomm.torch_dist import TorchDistCommunicator
from distcomm.values.ops import ReduceOp
from distcomm.wire.codec import PickleCodec, RestrictedCodec, register_safe_class

_moved.install()

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``distcomm.checked`` and the other modules that moved, by their old names, for one release."""
    if f"distcomm.{name}" in _moved.MOVED:
        return _moved.moved_module(f"distcomm.{name}")
    raise AttributeError(f"module 'distcomm' has no attribute {name!r}")

__all__ = [
    "Backend",
    "Call",
    "CheckHook",
    "CheckedCommunicator",
    "ClosedCommunicatorError",
    "CollectiveError",
    "CollectiveMismatchError",
    "Communicator",
    "ConfigurationError",
    "DistCommError",
    "DistributedConfig",
    "ExcludedRankError",
    "FlightRecorder",
    "Handle",
    "Hook",
    "HookHandle",
    "InconsistentInputError",
    "InvalidArgumentError",
    "LaunchPlan",
    "LocalWorld",
    "LocalCommunicator",
    "ObjectDecodeError",
    "RankDiedError",
    "RankFailure",
    "RankTimeoutError",
    "ReduceOp",
    "TraceError",
    "Resilient",
    "PickleCodec",
    "ProfileHook",
    "ProfiledCommunicator",
    "RestrictedCodec",
    "TorchDistCommunicator",
    "UnsafeObjectError",
    "all_ranks",
    "any_rank",
    "cleanup",
    "get_communicator",
    "main_process_first",
    "plan_launch",
    "rank_zero_only",
    "register_safe_class",
    "set_communicator",
    "setup",
    "spawn",
    "split_between_ranks",
    "use_communicator",
]
