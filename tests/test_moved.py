"""Modules that moved into packages are still importable by their old paths, for one release."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

import distcomm
from distcomm import _moved


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_an_old_path_gives_the_module_at_its_new_path_and_names_it(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {_moved.MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(_moved.MOVED[old])


def test_old_names_still_work_as_attributes_and_in_from_imports() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from distcomm.checked import CheckedCommunicator  # noqa: PLC0415 (the old path under test)

        assert CheckedCommunicator is distcomm.CheckedCommunicator
        assert distcomm.torch_backend.TorchDistBackend is importlib.import_module("distcomm.backends.torch_dist").TorchDistBackend
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        distcomm.nothing_here  # noqa: B018
