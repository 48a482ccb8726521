"""Read an API description (Sphinx ``py:data``/``py:function`` entries) and compare a module with it."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from types import ModuleType

import torch
import torch.distributed as dist

DATA = Path(__file__).parents[1] / "data"


def documented(name: str) -> tuple[list[str], dict[str, str]]:
    """The attribute names and the function signatures (as text) of ``tests/data/<name>``."""
    text = (DATA / name).read_text()
    attributes = re.findall(r"^\.\. py:data:: (\w+)", text, re.M)
    functions = dict(re.findall(r"^\.\. py:function:: (\w+)(\(.*)$", text, re.M))
    return attributes, functions


def check_signature(module: ModuleType, name: str, signature_text: str) -> None:
    """``module.name`` takes exactly the documented parameters, with the documented defaults."""
    params = signature_text[: signature_text.rindex(")") + 1]
    node = ast.parse(f"def f{params}: pass").body[0]
    assert isinstance(node, ast.FunctionDef)
    expected_names = [a.arg for a in node.args.args]
    defaults = [ast.unparse(d) for d in node.args.defaults]
    expected_defaults = dict(zip(expected_names[len(expected_names) - len(defaults) :], defaults))
    actual = inspect.signature(getattr(module, name)).parameters
    assert list(actual) == expected_names
    for param, expression in expected_defaults.items():
        value = eval(expression, {"dist": dist, "torch": torch})
        assert actual[param].default is value or actual[param].default == value, param
    for param in set(expected_names) - set(expected_defaults):
        assert actual[param].default is inspect.Parameter.empty, param
