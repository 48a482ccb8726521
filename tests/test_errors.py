import pickle

from distcomm import CollectiveError, CollectiveMismatchError, ConfigurationError, DistCommError, InvalidArgumentError


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
