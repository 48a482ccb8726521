"""distcomm: one object to talk to the other ranks of a PyTorch job.

Inject a :class:`Communicator` into your trainer: a :class:`TorchDistCommunicator`
over torch.distributed in production, a :class:`LocalCommunicator` in single-process
tests. Every result's kind depends on the input, never on the world size.
"""

from distcomm.active import get_communicator, set_communicator, use_communicator
from distcomm.communicator import Communicator, Handle
from distcomm.config import DistributedConfig
from distcomm.errors import (
    CollectiveError,
    CollectiveMismatchError,
    ConfigurationError,
    DistCommError,
    InvalidArgumentError,
)
from distcomm.launch import LaunchPlan, cleanup, plan_launch, setup
from distcomm.local import LocalCommunicator
from distcomm.ops import ReduceOp
from distcomm.torch_dist import TorchDistCommunicator

__version__ = "0.1.0"

__all__ = [
    "CollectiveError",
    "CollectiveMismatchError",
    "Communicator",
    "ConfigurationError",
    "DistCommError",
    "DistributedConfig",
    "Handle",
    "InvalidArgumentError",
    "LaunchPlan",
    "LocalCommunicator",
    "ReduceOp",
    "TorchDistCommunicator",
    "cleanup",
    "get_communicator",
    "plan_launch",
    "set_communicator",
    "setup",
    "use_communicator",
]
