"""Conversions between the values callers pass and the tensors that travel.

This is the one place that knows how a Python number or a NumPy array becomes a
tensor, and how a result tensor is turned back into the kind of value that came in.
The base :class:`~distcomm.Communicator` uses it for every collective, so all
communicators, at every world size, give back the same kinds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distcomm.errors import InvalidArgumentError
from distcomm.values.dtypes import fits_int64

PYTHON_NUMBER_DTYPES: dict[type, torch.dtype] = {
    bool: torch.bool,
    int: torch.int64,
    float: torch.float64,
    complex: torch.complex128,
}
"""The dtype each Python number type travels as: the one table of it."""

ACCEPTED = "a tensor, a Python number, a NumPy array or number, or a dict/list/tuple of those"


def dtype_name(dtype: Any) -> str:
    """``float32`` for ``torch.float32``: a dtype as error messages and records show it."""
    return str(dtype).removeprefix("torch.")


def describe(value: Any) -> str:
    """A short name for a value's kind, for error messages: ``float32[2, 3]``, ``int``."""
    if isinstance(value, torch.Tensor):
        return f"{dtype_name(value.dtype)}{list(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"numpy.{value.dtype}{list(value.shape)}"
    return type(value).__name__


def parse_device(device: Any, operation: str) -> torch.device:
    """``device`` (a ``torch.device`` or its name) as a device data can travel on, or a clear error:
    a name torch does not know, or ``meta`` (which holds no data), is refused before anything moves."""
    try:
        parsed = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise InvalidArgumentError(f"{operation}: device={device!r} is not a device ({error}); pass 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type == "meta":
        raise InvalidArgumentError(f"{operation}: device={device!r} holds no data; pass 'cpu', 'cuda' or 'cuda:N'")
    return parsed


def check_rank(value: Any, name: str, operation: str, world_size: int) -> int:
    """``value`` as a rank of a group of ``world_size``, or a clear error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"{operation}: {name} must be an int rank, got {describe(value)}")
    if not 0 <= value < world_size:
        raise InvalidArgumentError(f"{operation}: {name}={value} is outside the group; ranks go from 0 to {world_size - 1}")
    return int(value)


def is_python_number(value: Any) -> bool:
    """True for ``bool``, ``int``, ``float`` and ``complex``, but not NumPy scalars."""
    return type(value) in PYTHON_NUMBER_DTYPES


def to_tensor(value: Any, operation: str, where: str = "") -> torch.Tensor:
    """Return ``value`` as a tensor: a tensor itself, a number or array as a new CPU tensor.

    A NumPy array is copied, so a reduction never writes into the caller's array.
    """
    if isinstance(value, torch.Tensor):
        return value
    kind = type(value)
    if kind in PYTHON_NUMBER_DTYPES:
        if kind is int and not fits_int64(value):
            raise InvalidArgumentError(
                f"{operation}: the int {value}{_at(where)} does not fit in 64 bits; "
                "pass it as a float or split it"
            )
        return torch.tensor(value, dtype=PYTHON_NUMBER_DTYPES[kind])
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind not in "biufc":
            raise InvalidArgumentError(
                f"{operation}: a NumPy array of dtype {array.dtype}{_at(where)} cannot be "
                "communicated as numbers; use a numeric dtype, or an object collective"
            )
        try:
            return torch.from_numpy(np.array(array, copy=True, order="C"))
        except TypeError as error:
            raise InvalidArgumentError(
                f"{operation}: torch has no dtype for NumPy {array.dtype}{_at(where)}: {error}"
            ) from error
    raise InvalidArgumentError(
        f"{operation} cannot take a {describe(value)}{_at(where)}: pass {ACCEPTED}"
    )


def check_fillable(tensor: torch.Tensor, operation: str, where: str = "") -> None:
    """Refuse, before any communication, a tensor that cannot be filled in place: a meta tensor
    (no data) or an expanded view whose elements share memory. Lazily conjugated or negated views
    are filled through the view, as ``copy_`` fills them."""
    if tensor.device.type == "meta":
        raise InvalidArgumentError(
            f"{operation}: the meta tensor{_at(where)} has no data to communicate; materialize it first"
        )
    if is_expanded(tensor):
        raise InvalidArgumentError(
            f"{operation}: the tensor{_at(where)} is an expanded view whose elements share memory "
            "(a stride of 0), so it cannot be filled in place; pass tensor.clone() instead"
        )


def is_expanded(tensor: torch.Tensor) -> bool:
    """Whether some elements of ``tensor`` share memory (a stride of 0 along a dimension longer than one)."""
    return tensor.numel() > 1 and any(stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape))


def is_plain(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s memory holds exactly the values it shows, one after another: contiguous,
    and no lazy conjugation or negation (what a backend may send or fill as it is)."""
    return tensor.is_contiguous() and not tensor.is_conj() and not tensor.is_neg()


def readable(tensor: torch.Tensor, operation: str, where: str = "") -> torch.Tensor:
    """``tensor``'s values as a plain tensor to send (a tensor only read, never filled): detached,
    with any lazy conjugation or negation resolved and any view of any strides (expanded ones
    included) made contiguous; ``tensor``'s own memory when it already is one. A meta tensor,
    which holds no values, is refused."""
    if tensor.device.type == "meta":
        raise InvalidArgumentError(
            f"{operation}: the meta tensor{_at(where)} has no data to communicate; materialize it first"
        )
    plain = tensor.detach()
    if not is_plain(plain):
        plain = plain.resolve_conj().resolve_neg().contiguous()
    return plain


def from_tensor(result: torch.Tensor, template: Any) -> Any:
    """Give ``result`` the kind of ``template``, the value that came in.

    A tensor stays a tensor, a NumPy array becomes a NumPy array (a NumPy scalar a
    NumPy scalar), and a Python number becomes the Python number of the result's dtype.
    """
    if isinstance(template, torch.Tensor):
        return result
    if isinstance(template, np.ndarray):
        return result.detach().cpu().numpy()
    if isinstance(template, np.generic):
        return result.detach().cpu().numpy()[()]
    return result.item()


def _at(where: str) -> str:
    return f" at {where}" if where else ""
