"""Differentiable collectives: ``comm.autograd.all_gather(x)`` and friends, whose backward is
the adjoint collective, so a loss computed from gathered or reduced tensors trains the
tensors every rank contributed.

The gradients are those of ``torch.distributed.nn.functional`` (the global loss is the sum
of every rank's loss): all_reduce's backward all-reduces the gradient, all_gather's
reduce-scatters it, reduce_scatter's all-gathers it, all_to_all's sends it back, and
broadcast's reduces it onto the source. Each step is one of the communicator's own
collectives, so they take what those take (shapes that differ per rank, any backend, a
world of one, where each is the identity with the identity's gradient) and pass through
its hooks. torch's own autograd functions are not used: they need a process group and equal
shapes, and calling them logs a deprecation warning in torch 2.13.

Three more move a tensor split along a dimension to and from a group, as model-parallel
code does (Megatron's regions): :meth:`Differentiable.scatter_to_group` keeps this rank's
part (backward: gather the parts' gradients), :meth:`Differentiable.gather_from_group`
concatenates every rank's part (backward: keep this rank's part of the gradient, or with
``sum_grad=True`` the sum over ranks of it), and :meth:`Differentiable.reduce_from_group`
sums over the group with the gradient passed back as it is.

Tested on 2 and 3 real ranks against single-process computations: tests/test_autograd.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

import torch
from torch.autograd import Function

from distcomm.errors import InvalidArgumentError
from distcomm.values.conversion import check_rank, describe
from distcomm.values.ops import ReduceOp, ReduceOpLike, parse_reduce_op


class Collectives(Protocol):
    """What the differentiable collectives call of a :class:`~distcomm.Communicator` (a protocol, so
    that this module need not import the class that imports it)."""

    rank: int
    world_size: int

    def all_reduce(self, data: Any, op: ReduceOpLike = "sum") -> Any: ...
    def all_gather(self, data: Any) -> list[Any]: ...
    def reduce_scatter(self, chunks: Any, op: ReduceOpLike = "sum") -> Any: ...
    def all_to_all(self, chunks: Sequence[Any]) -> list[Any]: ...
    def broadcast(self, data: Any, src: int = 0) -> Any: ...
    def reduce(self, data: Any, dst: int = 0, op: ReduceOpLike = "sum") -> Any: ...
    def _refuse(self, operation: str, error: InvalidArgumentError) -> NoReturn: ...


V = TypeVar("V")
_LINEAR = (ReduceOp.SUM, ReduceOp.MEAN)


def part_sizes(size: int, parts: int) -> list[int]:
    """How a dimension of ``size`` splits into ``parts``: as ``torch.tensor_split`` does, the first
    ``size % parts`` parts one larger."""
    return [size // parts + (1 if i < size % parts else 0) for i in range(parts)]


class Differentiable:
    """The differentiable collectives of one communicator (``comm.autograd``).

    Every one but :meth:`scatter_to_group` and :meth:`scale_backward` (which do not communicate
    going forward) starts with its collective's opening: an argument that is wrong on one rank
    only (another dtype, an op with no gradient, a bad ``dim`` or ``src``) raises the same
    :class:`~distcomm.InvalidArgumentError` on every rank.
    """

    def __init__(self, comm: Collectives) -> None:
        self.comm = comm

    def _checked(self, operation: str, check: Callable[[], V]) -> V:
        """``check()``, or its error raised on every rank (this rank refuses the call's opening)."""
        try:
            return check()
        except InvalidArgumentError as error:
            self.comm._refuse(operation, error)

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOpLike = "sum") -> torch.Tensor:
        """A new tensor: ``tensor`` reduced over all ranks with ``op`` (sum or mean, the linear ones).
        Ranks agree on the shape and dtype first (one small collective)."""
        reduce_op = self._checked("all_reduce", lambda: (_tensor(tensor, "all_reduce"), _linear(op, "all_reduce"))[1])
        return _one(_AllReduce, self.comm, reduce_op, tensor)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (shapes may differ per rank), in rank order."""
        self._checked("all_gather", lambda: _tensor(tensor, "all_gather"))
        return list(_apply(_AllGather, self.comm, tensor))

    def reduce_scatter(self, chunks: Sequence[torch.Tensor] | torch.Tensor, op: ReduceOpLike = "sum", *, dim: int = 0) -> torch.Tensor:
        """This rank's entry of the reduction of every rank's ``chunks`` (a list of one tensor per
        rank, or one tensor split along ``dim``), as :meth:`Communicator.reduce_scatter`."""

        def check() -> tuple[ReduceOp, list[torch.Tensor]]:
            if isinstance(chunks, torch.Tensor):
                _check_dim(_tensor(chunks, "reduce_scatter"), dim, "reduce_scatter")
                parts = list(torch.tensor_split(chunks, self.comm.world_size, dim))
            else:
                parts = _tensors(chunks, "reduce_scatter")
            return _linear(op, "reduce_scatter"), parts

        reduce_op, parts = self._checked("reduce_scatter", check)
        return _one(_ReduceScatter, self.comm, reduce_op, *parts)

    def all_to_all(self, chunks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """What every rank sent this one (``chunks[i]`` goes to rank ``i``; sizes may differ per pair)."""
        parts = self._checked("all_to_all", lambda: _tensors(chunks, "all_to_all"))
        return list(_apply(_AllToAll, self.comm, *parts))

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """A new tensor holding ``src``'s ``tensor``; the gradient flows back to ``src``."""
        root = self._checked("broadcast", lambda: (_tensor(tensor, "broadcast"), _rank(src, "src", self.comm, "broadcast"))[1])
        return _one(_Broadcast, self.comm, root, tensor)

    def reduce(self, tensor: torch.Tensor, dst: int = 0) -> torch.Tensor:
        """A new tensor: the sum over all ranks of ``tensor`` on ``dst``, zeros elsewhere; the
        gradient is ``dst``'s, broadcast back to every rank."""
        root = self._checked("reduce", lambda: (_tensor(tensor, "reduce"), _rank(dst, "dst", self.comm, "reduce"))[1])
        return _one(_Reduce, self.comm, root, tensor)

    def scatter_to_group(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """This rank's part of ``tensor`` (the same on every rank) split along ``dim`` into one part
        per rank (:func:`part_sizes`); backward gathers the parts' gradients. It does not
        communicate going forward, so a bad argument raises on the rank that passed it only."""
        _check_dim(_tensor(tensor, "scatter_to_group"), dim, "scatter_to_group")
        return _one(_ScatterToGroup, self.comm, dim, tensor)

    def reduce_from_group(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over all ranks of ``tensor``, whose gradient passes back as it is: the ranks'
        losses are copies of one loss, as after :meth:`gather_from_group` (Megatron's reduce from
        a model-parallel region). For the sum of different losses use :meth:`all_reduce`."""
        self._checked("reduce_from_group", lambda: _tensor(tensor, "reduce_from_group"))
        return _one(_ReduceFromGroup, self.comm, tensor)

    def scale_backward(self, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        """``tensor`` itself, whose gradient is multiplied by ``factor`` on the way back (no communication)."""
        return _one(_ScaleBackward, factor, _tensor(tensor, "scale_backward"))

    def gather_from_group(self, tensor: torch.Tensor, dim: int = -1, *, sum_grad: bool = False) -> torch.Tensor:
        """Every rank's part concatenated along ``dim`` (parts may differ in size along it); backward
        keeps this rank's part of the gradient, or with ``sum_grad`` the sum over ranks of it."""
        self._checked("gather_from_group", lambda: _check_dim(_tensor(tensor, "gather_from_group"), dim, "gather_from_group"))
        return _one(_GatherFromGroup, self.comm, dim, sum_grad, tensor)


def _apply(function: type[Function], *args: Any) -> Any:
    return function.apply(*args)  # type: ignore[no-untyped-call]


def _one(function: type[Function], *args: Any) -> torch.Tensor:
    result: torch.Tensor = _apply(function, *args)
    return result


def _linear(op: ReduceOpLike, operation: str) -> ReduceOp:
    reduce_op = parse_reduce_op(op)
    if reduce_op not in _LINEAR:
        raise InvalidArgumentError(f"autograd.{operation}: op {reduce_op.value!r} has no gradient here; use sum or mean")
    return reduce_op


def _tensor(value: Any, operation: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not (value.is_floating_point() or value.is_complex()):
        raise InvalidArgumentError(f"autograd.{operation} takes a floating-point tensor, got {describe(value)}")
    return value


def _tensors(values: Any, operation: str) -> list[torch.Tensor]:
    if isinstance(values, (torch.Tensor, str, bytes)) or not isinstance(values, Sequence):
        raise InvalidArgumentError(f"autograd.{operation} takes a list of one tensor per rank, got {describe(values)}")
    return [_tensor(v, operation) for v in values]


def _check_dim(tensor: torch.Tensor, dim: Any, operation: str) -> None:
    if tensor.dim() == 0 or isinstance(dim, bool) or not isinstance(dim, int) or not -tensor.dim() <= dim < tensor.dim():
        raise InvalidArgumentError(f"autograd.{operation}: cannot split or join a tensor of shape {list(tensor.shape)} along dim {dim!r}")


def _rank(value: Any, name: str, comm: Collectives, operation: str) -> int:
    return check_rank(value, name, f"autograd.{operation}", comm.world_size)


class _AllReduce(Function):
    @staticmethod
    def forward(ctx: Any, comm: Collectives, op: ReduceOp, tensor: torch.Tensor) -> torch.Tensor:
        ctx.comm, ctx.op = comm, op
        # As a list of one: the agreed path, whose opening checks every rank's shape and dtype.
        reduced: torch.Tensor = comm.all_reduce([tensor.detach().clone()], op)[0]
        return reduced

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, _one(_AllReduce, ctx.comm, ctx.op, grad.contiguous())


class _AllGather(Function):
    @staticmethod
    def forward(ctx: Any, comm: Collectives, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.comm = comm
        return tuple(comm.all_gather(tensor.detach()))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, _one(_ReduceScatter, ctx.comm, ReduceOp.SUM, *(g.contiguous() for g in grads))


class _ReduceScatter(Function):
    @staticmethod
    def forward(ctx: Any, comm: Collectives, op: ReduceOp, *chunks: torch.Tensor) -> torch.Tensor:
        ctx.comm, ctx.op = comm, op
        reduced: torch.Tensor = comm.reduce_scatter([c.detach() for c in chunks], op)
        return reduced

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        grads = _apply(_AllGather, ctx.comm, grad.contiguous())
        if ctx.op is ReduceOp.MEAN:
            grads = [g / ctx.comm.world_size for g in grads]
        return (None, None, *grads)


class _AllToAll(Function):
    @staticmethod
    def forward(ctx: Any, comm: Collectives, *chunks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.comm = comm
        return tuple(comm.all_to_all([c.detach() for c in chunks]))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        return (None, *_apply(_AllToAll, ctx.comm, *(g.contiguous() for g in grads)))


class _Broadcast(Function):
    @staticmethod
    def forward(ctx: Any, comm: Collectives, src: int, tensor: torch.Tensor) -> torch.Tensor:
        ctx.comm, ctx.src = comm, src
        received: torch.Tensor = comm.broadcast(tensor.detach().clone(), src)
        return received

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, _one(_Reduce, ctx.comm, ctx.src, grad.contiguous())


class _Reduce(Function):
    @staticmethod
    def forward(ctx: Any, comm: Collectives, dst: int, tensor: torch.Tensor) -> torch.Tensor:
        ctx.comm, ctx.dst = comm, dst
        summed = comm.reduce(tensor.detach().clone(), dst=dst)
        return summed if summed is not None else torch.zeros_like(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, _one(_Broadcast, ctx.comm, ctx.dst, grad.contiguous())


class _ReduceFromGroup(Function):
    @staticmethod
    def forward(ctx: Any, comm: Collectives, tensor: torch.Tensor) -> torch.Tensor:
        reduced: torch.Tensor = comm.all_reduce([tensor.detach().clone()], "sum")[0]
        return reduced

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


class _ScaleBackward(Function):
    @staticmethod
    def forward(ctx: Any, factor: float, tensor: torch.Tensor) -> torch.Tensor:
        ctx.factor = factor
        return tensor.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad * ctx.factor


class _ScatterToGroup(Function):
    @staticmethod
    def forward(ctx: Any, comm: Collectives, dim: int, tensor: torch.Tensor) -> torch.Tensor:
        ctx.comm, ctx.dim = comm, dim
        return torch.tensor_split(tensor.detach(), comm.world_size, dim)[comm.rank].contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, _one(_GatherFromGroup, ctx.comm, ctx.dim, False, grad.contiguous())


class _GatherFromGroup(Function):
    @staticmethod
    def forward(ctx: Any, comm: Collectives, dim: int, sum_grad: bool, tensor: torch.Tensor) -> torch.Tensor:
        ctx.comm, ctx.dim, ctx.sum_grad = comm, dim, sum_grad
        parts = comm.all_gather(tensor.detach())
        ctx.sizes = [p.shape[dim] for p in parts]
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None, torch.Tensor]:
        if ctx.sum_grad:
            grad = _one(_AllReduce, ctx.comm, ReduceOp.SUM, grad.contiguous())
        return None, None, None, torch.split(grad, ctx.sizes, ctx.dim)[ctx.comm.rank].contiguous()
