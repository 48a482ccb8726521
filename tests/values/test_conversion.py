import numpy as np
import pytest
import torch

from distcomm import InvalidArgumentError
from distcomm.values.conversion import describe, from_tensor, to_tensor


@pytest.mark.parametrize(
    ("value", "dtype"),
    [(True, torch.bool), (3, torch.int64), (2.5, torch.float64), (1j, torch.complex128),
     (np.float32(1), torch.float32), (np.arange(3, dtype=np.int16), torch.int16)],
)  # fmt: skip
def test_values_become_tensors_of_the_matching_dtype(value, dtype) -> None:
    assert to_tensor(value, "op").dtype == dtype


def test_arrays_are_copied_so_reductions_never_write_into_them() -> None:
    array = np.zeros(3)
    to_tensor(array, "op").add_(1)
    assert array.sum() == 0


def test_a_tensor_is_passed_through() -> None:
    t = torch.ones(2)
    assert to_tensor(t, "op") is t


@pytest.mark.parametrize("bad", ["text", None, object(), np.array(["a"]), 2**70])
def test_bad_values_get_a_clear_error(bad) -> None:
    with pytest.raises(InvalidArgumentError, match="all_reduce"):
        to_tensor(bad, "all_reduce", "['x']")


def test_results_take_the_kind_of_the_input() -> None:
    result = torch.tensor(2.0, dtype=torch.float32)
    assert type(from_tensor(result, 1.0)) is float
    assert type(from_tensor(torch.tensor(2), 1)) is int
    assert type(from_tensor(torch.tensor(True), True)) is bool
    assert type(from_tensor(result, np.float32(1))) is np.float32
    assert isinstance(from_tensor(torch.ones(2), np.ones(2)), np.ndarray)
    assert from_tensor(result, torch.ones(())) is result


def test_describe() -> None:
    assert describe(torch.ones(2, 3)) == "float32[2, 3]"
    assert describe(np.ones(2)) == "numpy.float64[2]"
    assert describe("x") == "str"
