"""Reduce operations: one enum, and one parser for every spelling callers use."""

from __future__ import annotations

import enum
from typing import Any

import torch.distributed as dist

from distcomm.errors import InvalidArgumentError


class ReduceOp(enum.Enum):
    """The reductions every communicator supports, on every backend.

    ``MEAN`` is computed as a sum followed by a division by the world size, so it
    works on Gloo (which has no native average) and is the same at every world size.
    """

    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    PRODUCT = "product"

    # Members are singletons: hash them by identity, in C, not by name in Python (they key
    # dicts on every call of the hot paths).
    __hash__ = object.__hash__


_ALIASES = {"avg": ReduceOp.MEAN, "average": ReduceOp.MEAN, "prod": ReduceOp.PRODUCT}

_FROM_TORCH: dict[Any, ReduceOp] = {
    dist.ReduceOp.SUM: ReduceOp.SUM,
    dist.ReduceOp.AVG: ReduceOp.MEAN,
    dist.ReduceOp.MIN: ReduceOp.MIN,
    dist.ReduceOp.MAX: ReduceOp.MAX,
    dist.ReduceOp.PRODUCT: ReduceOp.PRODUCT,
}

TO_TORCH: dict[ReduceOp, Any] = {
    ReduceOp.SUM: dist.ReduceOp.SUM,
    ReduceOp.MIN: dist.ReduceOp.MIN,
    ReduceOp.MAX: dist.ReduceOp.MAX,
    ReduceOp.PRODUCT: dist.ReduceOp.PRODUCT,
}
"""The torch op that carries each of ours (MEAN travels as SUM)."""

ReduceOpLike = ReduceOp | str | dist.ReduceOp


_EXACT: dict[object, ReduceOp] = {**{o.value: o for o in ReduceOp}, **{o: o for o in ReduceOp}}


def parse_reduce_op(op: ReduceOpLike) -> ReduceOp:
    """Turn ``"sum"``, ``"MEAN"``, ``ReduceOp.MAX`` or ``dist.ReduceOp.MIN`` into a :class:`ReduceOp`."""
    if type(op) is str or type(op) is ReduceOp:  # the common spellings, in one dict lookup
        found = _EXACT.get(op)
        if found is not None:
            return found
    if isinstance(op, str):
        name = op.strip().lower()
        if name in _ALIASES:
            return _ALIASES[name]
        try:
            return ReduceOp(name)
        except ValueError:
            pass
    elif isinstance(op, dist.ReduceOp.RedOpType) and op in _FROM_TORCH:
        return _FROM_TORCH[op]
    allowed = ", ".join(repr(o.value) for o in ReduceOp)
    raise InvalidArgumentError(
        f"unknown reduce op {op!r}: use one of {allowed} (any case), "
        "or torch.distributed.ReduceOp.SUM/AVG/MIN/MAX/PRODUCT"
    )
