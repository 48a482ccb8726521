"""The rules of a reduction: what each leaf travels as, and how ranks' kinds combine.

These rules decide the kind of every result from the input alone, so a world of one and
a world of many give the same answer:

* a leaf travels as its own dtype, except that a mean of integers is an exact int64 sum
  divided as floats, and bools follow torch's and NumPy's logic (sum is "any");
* Python numbers that differ in kind across ranks combine as Python would: an ``int`` on
  one rank and a ``float`` on another give a ``float`` everywhere;
* Python ints whose result could leave int64 are reduced exactly, as Python ints;
* rows reduced locally (every rank's part of a reduce_scatter, for one) are reduced in rank order, so every
  rank computes the same bits (:func:`reduce_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from distcomm.errors import InvalidArgumentError
from distcomm.values.conversion import PYTHON_NUMBER_DTYPES, describe, dtype_name, is_python_number
from distcomm.values.dtypes import INT64_MAX, INT64_MIN
from distcomm.values.ops import ReduceOp

INT64_BITS = 63
"""A Python int fits in int64 when :func:`int_bits` of it is at most this."""

PYTHON_PROTOTYPES: dict[type, torch.Tensor] = {kind: torch.zeros((), dtype=dtype) for kind, dtype in PYTHON_NUMBER_DTYPES.items()}
"""A 0-d tensor of the dtype each Python number type travels as (only its dtype is read)."""

PYTHON_KINDS: tuple[type, ...] = (bool, int, float, complex)
"""Python's numeric tower, narrowest first: across ranks, the widest kind wins."""
KIND_CODES = {kind: code for code, kind in enumerate(PYTHON_KINDS)}

ARITHMETIC_DTYPES = {torch.uint16: torch.int32, torch.uint32: torch.int64}
"""Dtypes torch has no arithmetic for on every device, and the wider dtype rows of them are reduced
in (the result wraps back as the backends' own reductions of them do)."""

_UNSUPPORTED_DTYPES = {torch.uint64: "int64"}
"""Dtypes no backend can reduce everywhere; refused at every world size, with what to use."""


@attrs.frozen
class ReducePlan:
    """How one leaf travels through a reduction: the dtype it travels as, the op, and
    for a mean the dtype its result is divided in."""

    transport_dtype: torch.dtype
    op: ReduceOp
    mean_dtype: torch.dtype | None = None


def plan_reduction(template: Any, tensor: torch.Tensor, op: ReduceOp, operation: str) -> ReducePlan:
    """Decide how a leaf is reduced, so that the result kind depends only on the input.

    * A mean of integers or bools is exact: summed as int64, then divided as floats.
    * Bool tensors and arrays keep torch's and NumPy's logic: sum is "any", product
      "all", min "all", max "any", and they stay bool. A Python ``bool`` counts as an
      ``int`` for sum and product, as it does in Python.
    * What some backend cannot do (complex min, max and product; uint64) is refused at
      every world size, so single-process tests meet the same error as the cluster.
    """
    dtype = tensor.dtype
    if dtype.is_complex and op in (ReduceOp.MIN, ReduceOp.MAX, ReduceOp.PRODUCT):
        raise InvalidArgumentError(
            f"{operation}: op {op.value!r} is not defined for complex values on every backend ({describe(template)}); "
            "reduce the real and imaginary parts, or use sum or mean"
        )
    if dtype in _UNSUPPORTED_DTYPES:
        raise InvalidArgumentError(
            f"{operation}: {dtype_name(dtype)} cannot be reduced on every backend "
            f"({describe(template)}); convert it to {_UNSUPPORTED_DTYPES[dtype]} first"
        )
    exact = dtype.is_floating_point or dtype.is_complex
    if op is ReduceOp.MEAN:
        if exact:
            return ReducePlan(dtype, ReduceOp.SUM, dtype)
        to = torch.get_default_dtype() if isinstance(template, torch.Tensor) else torch.float64
        return ReducePlan(torch.int64, ReduceOp.SUM, to)
    if dtype == torch.bool:
        if is_python_number(template) and op in (ReduceOp.SUM, ReduceOp.PRODUCT):
            return ReducePlan(torch.int64, op)
        logical = {ReduceOp.SUM: ReduceOp.MAX, ReduceOp.PRODUCT: ReduceOp.MIN}
        return ReducePlan(torch.bool, logical.get(op, op))
    return ReducePlan(dtype, op)


NOT_ALONE = object()
"""What :func:`reduce_if_alone` returns when the reduction must run as a collective."""


def reduce_if_alone(value: Any, op: ReduceOp, world_size: int) -> Any:
    """The world-of-one shortcut, in one place: over one rank the reduction of a Python number
    (one that fits the general path) is decided locally, as :func:`plan_reduction` rules, and
    looked up per kind and op; anything else gives :data:`NOT_ALONE`."""
    if world_size != 1:
        return NOT_ALONE
    try:
        rule = _ALONE[id(op)][type(value)]  # by identity: an enum member hashes slowly
    except KeyError:
        if type(value) not in PYTHON_PROTOTYPES:
            return NOT_ALONE
        rule = _ALONE.setdefault(id(op), {})[type(value)] = _alone_rule(type(value), op)
    return value if rule is None else rule(value)


def _alone_rule(kind: type, op: ReduceOp) -> Callable[[Any], Any] | None:
    """How one number of ``kind`` reduces alone: a conversion, or ``None`` when it is itself."""
    prototype = PYTHON_PROTOTYPES[kind]
    plan = plan_reduction(kind(), prototype, op, "all_reduce")  # raises for what it refuses
    if plan.mean_dtype is not None:
        convert: Callable[[Any], Any] = complex if plan.mean_dtype.is_complex else float
    elif plan.transport_dtype != prototype.dtype:  # a bool summed or multiplied counts as an int
        convert = int
    else:
        convert = _itself
    if kind is int:  # an int beyond int64 takes the exact general path
        return lambda value: convert(value) if INT64_MIN <= value <= INT64_MAX else NOT_ALONE
    return None if convert is _itself else convert


def _itself(value: Any) -> Any:
    return value


_ALONE: dict[int, dict[type, Callable[[Any], Any] | None]] = {}
"""The world-of-one rule by the id of the ReduceOp member, then the Python number type."""


def int_bits(value: int) -> int:
    """Bits of magnitude of ``value``: it fits in int64 exactly when this is at most 63."""
    return (value if value >= 0 else ~value).bit_length()


def needs_exact(op: ReduceOp, bits_per_rank: Sequence[int], world_size: int) -> bool:
    """Whether a reduction of Python ints of these sizes could leave int64 on the way."""
    widest = max(bits_per_rank, default=0)
    if op in (ReduceOp.SUM, ReduceOp.MEAN):
        return widest + (world_size - 1).bit_length() > INT64_BITS
    if op is ReduceOp.PRODUCT:
        return sum(bits_per_rank) > INT64_BITS
    return widest > INT64_BITS


def reduce_exactly(columns: Sequence[Sequence[Any]], op: ReduceOp, world_size: int) -> list[Any]:
    """Reduce Python numbers as Python does, one column (one leaf, every rank's value) at a time.

    Used where int64 could overflow: ints stay exact at any size, and every rank adds in
    rank order, so every rank gets the same answer.
    """
    results = []
    for column in columns:
        if op is ReduceOp.SUM:
            results.append(sum(column))
        elif op is ReduceOp.MEAN:
            try:
                results.append(sum(column) / world_size)
            except OverflowError as error:
                raise InvalidArgumentError(f"all_reduce: the mean of {column[0]!r}... does not fit in a float") from error
        elif op is ReduceOp.PRODUCT:
            results.append(math.prod(column))
        else:
            results.append(min(column) if op is ReduceOp.MIN else max(column))
    return results


def promote(value: Any, kind: type) -> Any:
    """``value`` (a Python number) as the wider Python number type ``kind``."""
    return value if type(value) is kind else kind(value)


_PLANS: dict[tuple[Any, ...], ReducePlan] = {}
"""Plans already made, by what decides them: the leaf's kind, its dtype, the op and the default dtype."""


def cached_plan(template: Any, tensor: torch.Tensor, op: ReduceOp, operation: str) -> ReducePlan:
    """:func:`plan_reduction`, looked up instead of recomputed on hot paths (the same plan object
    for every leaf of one kind, so callers can tell at a glance that a group shares one plan)."""
    kind = type(template) if type(template) in PYTHON_PROTOTYPES else isinstance(template, torch.Tensor)
    key = (kind, tensor.dtype, op, torch.get_default_dtype())
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = plan_reduction(template, tensor, op, operation)  # raises for what it refuses
    return plan


def reduce_rows(rows: torch.Tensor, op: ReduceOp, out: torch.Tensor) -> None:
    """Reduce every rank's row into ``out``, element by element in rank order, so that every
    rank computes exactly the same bits."""
    wider = ARITHMETIC_DTYPES.get(rows.dtype)
    if wider is not None:
        result = torch.empty(out.shape, dtype=wider, device=out.device)
        reduce_rows(rows.to(wider), op, result)
        out.copy_(result)
        return
    out.copy_(rows[0])
    for row in rows[1:]:
        if op is ReduceOp.SUM:
            out.add_(row)
        elif op is ReduceOp.PRODUCT:
            out.mul_(row)
        elif op is ReduceOp.MIN:
            torch.minimum(out, row, out=out)
        else:
            torch.maximum(out, row, out=out)
