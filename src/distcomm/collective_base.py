"""What every family of collectives of a :class:`~distcomm.Communicator` stands on: its channel,
its identity, and the one synchronous reduction the families share.

The public collectives come in families, each a base class of the communicator in a module
of its own (:mod:`~distcomm.object_collectives`, :mod:`~distcomm.async_collectives`,
:mod:`~distcomm.exchange_collectives`, :mod:`~distcomm.point_to_point`); they all build on
this one.

Tested through every collective: tests/test_collectives.py, tests/test_exchange_collectives.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import torch

from distcomm.errors import InvalidArgumentError
from distcomm.instrument.hooks import HookRegistry
from distcomm.values.conversion import check_rank
from distcomm.values.ops import ReduceOp, ReduceOpLike, parse_reduce_op
from distcomm.values.reduction_rules import NOT_ALONE, reduce_if_alone
from distcomm.wire import call_check as opening
from distcomm.wire import reduce as reducing

V = TypeVar("V")

if TYPE_CHECKING:
    from distcomm.backends.backend import Backend
    from distcomm.wire.context import Channel


class CollectiveBase(HookRegistry):
    """The channel and identity every collective uses, and the reduction several share."""

    _channel: Channel
    _backend: Backend
    rank: int
    world_size: int

    def _check_rank(self, value: Any, name: str, operation: str) -> int:
        return check_rank(value, name, operation, self.world_size)

    def _refuse(self, operation: str, error: InvalidArgumentError) -> NoReturn:
        """Raise ``error`` (this rank's own bad argument) on every rank: this rank takes part in the
        call's opening with it instead of the call (see :func:`distcomm.wire.call_check.refuse`). Only for
        calls whose every form starts with an opening."""
        opening.refuse(self._channel, operation, str(error))

    def _parsed(self, operation: str, parse: Callable[[], V]) -> V:
        """``parse()``, or its :class:`InvalidArgumentError` raised on every rank (:meth:`_refuse`)."""
        try:
            return parse()
        except InvalidArgumentError as error:
            self._refuse(operation, error)

    def _root(self, value: Any, name: str, operation: str) -> int:
        """``value`` as the root rank of an opening call, or its error raised on every rank."""
        return self._parsed(operation, lambda: check_rank(value, name, operation, self.world_size))

    def _op(self, op: ReduceOpLike, operation: str) -> ReduceOp:
        """``op`` parsed for an opening call, or its error raised on every rank."""
        try:
            return parse_reduce_op(op)
        except InvalidArgumentError as error:
            self._refuse(operation, InvalidArgumentError(f"{operation}: {error}"))

    def _reduce(self, data: Any, op: ReduceOp, operation: str = "all_reduce") -> Any:
        """Reduce ``data`` over every rank with the rules of ``all_reduce``."""
        alone = reduce_if_alone(data, op, self.world_size)
        if alone is not NOT_ALONE:
            return alone
        if isinstance(data, torch.Tensor):
            return reducing.reduce_tensor(self._channel, data, op)
        return reducing.reduce_structure(self._channel, data, op, operation)
