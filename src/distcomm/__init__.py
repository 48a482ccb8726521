"""distcomm: one object to talk to the other ranks of a PyTorch job.

Inject a :class:`Communicator` into your trainer: a :class:`TorchDistCommunicator`
over torch.distributed in production, a :class:`LocalCommunicator` in single-process
tests. Every result's kind depends on the input, never on the world size.
"""

from distcomm.active import get_communicator, set_communicator, use_communicator
from distcomm.checked import CheckedCommunicator
from distcomm.communicator import Communicator, Handle
from distcomm.config import DistributedConfig
from distcomm.errors import (
    CollectiveError,
    CollectiveMismatchError,
    ConfigurationError,
    DistCommError,
    InconsistentInputError,
    InvalidArgumentError,
)
from distcomm.helpers import all_ranks, any_rank, main_process_first, rank_zero_only, split_between_ranks
from distcomm.launch import LaunchPlan, cleanup, plan_launch, setup
from distcomm.local import LocalCommunicator
from distcomm.ops import ReduceOp
from distcomm.profiled import ProfiledCommunicator
from distcomm.serialization import PickleCodec, RestrictedCodec, UnsafeObjectError, register_safe_class
from distcomm.torch_dist import TorchDistCommunicator

__version__ = "0.1.0"

__all__ = [
    "CheckedCommunicator",
    "CollectiveError",
    "CollectiveMismatchError",
    "Communicator",
    "ConfigurationError",
    "DistCommError",
    "DistributedConfig",
    "Handle",
    "InconsistentInputError",
    "InvalidArgumentError",
    "LaunchPlan",
    "LocalCommunicator",
    "ReduceOp",
    "PickleCodec",
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
