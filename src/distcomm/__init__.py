"""distcomm: one object to talk to the other ranks of a PyTorch job.

Inject a :class:`Communicator` into your trainer: a :class:`TorchDistCommunicator`
over torch.distributed in production, a :class:`LocalCommunicator` in single-process
tests. Every result's kind depends on the input, never on the world size.
"""

from distcomm.active import get_communicator, set_communicator, use_communicator
from distcomm.backend import Backend
from distcomm.checked import CheckedCommunicator, CheckHook
from distcomm.communicator import Communicator
from distcomm.config import DistributedConfig
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
)
from distcomm.flight_recorder import FlightRecorder
from distcomm.handles import Handle
from distcomm.helpers import all_ranks, any_rank, main_process_first, rank_zero_only, split_between_ranks
from distcomm.hooks import Call, Hook, HookHandle
from distcomm.launch import LaunchPlan, cleanup, plan_launch, setup
from distcomm.local import LocalCommunicator
from distcomm.ops import ReduceOp
from distcomm.profiled import ProfiledCommunicator, ProfileHook
from distcomm.resilience import Resilient
from distcomm.serialization import PickleCodec, RestrictedCodec, UnsafeObjectError, register_safe_class
from distcomm.torch_dist import TorchDistCommunicator

__version__ = "0.1.0"

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
    "LocalCommunicator",
    "ObjectDecodeError",
    "ReduceOp",
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
    "split_between_ranks",
    "use_communicator",
]
