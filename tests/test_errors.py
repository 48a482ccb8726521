import pickle

import pytest
import torch
from support.transports import BackendCommunicator

from distcomm import (
    CollectiveError,
    CollectiveMismatchError,
    ConfigurationError,
    DistCommError,
    InconsistentInputError,
    InvalidArgumentError,
)
from distcomm.backends.local import LocalBackend


def test_hierarchy_lets_old_code_keep_catching() -> None:
    assert issubclass(CollectiveError, RuntimeError) and issubclass(CollectiveError, DistCommError)
    assert issubclass(CollectiveMismatchError, CollectiveError)
    assert issubclass(InvalidArgumentError, ValueError) and issubclass(InvalidArgumentError, DistCommError)
    assert issubclass(ConfigurationError, DistCommError)


def test_collective_error_names_operation_rank_and_cause_and_pickles() -> None:
    error = CollectiveError("all_reduce", 3, TimeoutError("Timed out after 10 s"))
    assert str(error) == "all_reduce failed on rank 3: TimeoutError: Timed out after 10 s"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.operation, copy.rank) == ("all_reduce", 3) and "Timed out" in str(copy)


class _FailingGathers(LocalBackend):
    """Rank 0 of a world of two whose primitives fail, as a lost peer would make them (over one
    rank, object collectives exchange nothing); the first to fail is the call check's all_reduce."""

    world_size = 2

    def all_reduce(self, tensor, op):
        raise CollectiveError("all_reduce", 0, "connection closed by peer")

    def all_gather(self, tensor, out=None):
        raise CollectiveError("all_gather", 0, "connection closed by peer")


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("gather_object", lambda c: c.gather_object("x")),
        ("all_gather_object", lambda c: c.all_gather_object("x")),
        ("all_gather", lambda c: c.all_gather([torch.ones(2)])),
    ],
    ids=["gather_object", "all_gather_object", "all_gather"],
)
def test_a_failed_step_is_reported_under_the_method_the_caller_called(method, call) -> None:
    with pytest.raises(CollectiveError) as raised:
        call(BackendCommunicator(_FailingGathers()))
    assert raised.value.operation == method
    assert str(raised.value) == f"{method} failed on rank 0: its all_reduce step failed: connection closed by peer"
    assert isinstance(raised.value.__cause__, CollectiveError)


def test_inconsistent_input_is_an_invalid_argument() -> None:
    assert issubclass(InconsistentInputError, InvalidArgumentError)


class _FailingPeers(_FailingGathers):
    """The same world: the agreement step of a reduction fails."""


def test_a_failed_agreement_is_reported_under_the_reduction() -> None:
    with pytest.raises(CollectiveError, match="^all_reduce failed on rank 0: its all_reduce step failed"):
        BackendCommunicator(_FailingPeers()).all_reduce({"loss": 1.0})
    with pytest.raises(CollectiveError, match="^reduce_dict failed on rank 0: its all_reduce step failed"):
        BackendCommunicator(_FailingPeers()).reduce_dict({"loss": 1.0})


def test_errors_are_filed_by_when_they_happen() -> None:
    from distcomm import ClosedCommunicatorError, ObjectDecodeError, UnsafeObjectError

    assert issubclass(ClosedCommunicatorError, InvalidArgumentError)  # found before any communication
    assert issubclass(UnsafeObjectError, ObjectDecodeError)  # raised by receivers, after data moved
    assert not issubclass(ObjectDecodeError, InvalidArgumentError)
