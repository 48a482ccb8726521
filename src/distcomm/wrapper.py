"""``CommunicatorWrapper``: the base of extras (checking, profiling) that wrap any communicator.

Every public collective of the wrapper goes through one hook, :meth:`_intercept`, with
the operation's name, a short description of its arguments, the payload, and a
callable that runs the inner communicator's method. A subclass overrides the hook
once instead of touching every method, and the inner communicator needs no flags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from distcomm.agreement import digest64
from distcomm.communicator import Communicator, Handle
from distcomm.conversion import describe
from distcomm.nested import flatten
from distcomm.ops import ReduceOp, ReduceOpLike, parse_reduce_op
from distcomm.serialization import ObjectCodec

T = TypeVar("T")


def signature_of(data: Any, *, shapes: bool = True) -> str:
    """What must match across ranks for a collective on ``data``: dtypes and shapes of tensors,
    kinds of other leaves. With ``shapes=False`` only dtypes and numbers of dimensions."""
    if isinstance(data, torch.Tensor):
        text = describe(data)
        return text if shapes else f"{str(data.dtype).removeprefix('torch.')}[{data.dim()}d]"
    leaves, paths, _ = flatten(data)
    if len(leaves) == 1 and leaves[0] is data:
        return describe(data)
    # In key-path order, as the communicator matches leaves; the digest covers every leaf.
    entries = sorted(zip(paths, (signature_of(leaf, shapes=shapes) for leaf in leaves)))
    inner = ", ".join(text for _, text in entries[:8])
    more = f", ... {len(entries)} leaves" if len(entries) > 8 else ""
    return f"{type(data).__name__}({inner}{more}) #{digest64(repr(entries).encode()) & _DIGEST_MASK:012x}"


def tensor_layout(data: Any) -> str:
    """The tensors of ``data`` that a broadcast fills: their key paths, dtypes and shapes."""
    if isinstance(data, torch.Tensor):
        return describe(data)
    leaves, paths, _ = flatten(data)
    entries = sorted((path, describe(leaf)) for path, leaf in zip(paths, leaves) if isinstance(leaf, torch.Tensor))
    if not entries:
        return "object"
    return f"object with {len(entries)} tensors #{digest64(repr(entries).encode()) & _DIGEST_MASK:012x}"


_DIGEST_MASK = 2**48 - 1


def payload_bytes(data: Any) -> int:
    """The bytes a payload carries: tensors and arrays by size, numbers 8 each; objects 0 (unknown)."""
    if isinstance(data, torch.Tensor):
        return data.numel() * data.element_size()
    total = 0
    for leaf in flatten(data)[0]:
        if isinstance(leaf, torch.Tensor):
            total += leaf.numel() * leaf.element_size()
        elif hasattr(leaf, "nbytes"):
            total += int(leaf.nbytes)
        elif isinstance(leaf, (bool, int, float, complex)):
            total += 8
    return total


class CommunicatorWrapper(Communicator):
    """Delegates everything to ``inner``; every collective passes through :meth:`_intercept`."""

    def __init__(self, inner: Communicator) -> None:
        if not isinstance(inner, Communicator):
            raise TypeError(f"{type(self).__name__} wraps a Communicator, got {type(inner).__name__}")
        self.inner = inner

    def _intercept(self, operation: str, details: str, payload: Any, run: Callable[[], T]) -> T:
        """Run one collective; subclasses add their work around ``run()``."""
        return run()

    # ------------------------------------------------------------ delegation

    @property
    def rank(self) -> int:
        return self.inner.rank

    @property
    def world_size(self) -> int:
        return self.inner.world_size

    @property
    def local_rank(self) -> int:
        return self.inner.local_rank

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def backend(self) -> str:
        return self.inner.backend

    @property
    def object_codec(self) -> ObjectCodec:
        return self.inner.object_codec

    @object_codec.setter
    def object_codec(self, codec: ObjectCodec) -> None:
        self.inner.object_codec = codec

    @property
    def closed(self) -> bool:
        return self.inner.closed

    def __getattr__(self, name: str) -> Any:
        # Anything the inner communicator adds (``group``, say) stays reachable.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def _barrier(self) -> None:
        self.inner._barrier()

    def _broadcast_tensor(self, tensor: torch.Tensor, src: int) -> None:
        self.inner._broadcast_tensor(tensor, src)

    def _all_reduce_tensor(self, tensor: torch.Tensor, op: ReduceOp) -> None:
        self.inner._all_reduce_tensor(tensor, op)

    def _all_gather_tensor(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return self.inner._all_gather_tensor(tensor)

    def _accepts_device(self, device: torch.device) -> bool:
        return self.inner._accepts_device(device)

    def _split(self, members: list[int]) -> Communicator | None:
        return _rewrap(self, self.inner._split(members))

    def _wrap_child(self, child: Communicator) -> Communicator:
        """A sub-communicator of a wrapped one is wrapped the same way."""
        return type(self)(child)

    def _close(self) -> None:
        self.inner.close()

    def close(self) -> None:
        self.inner.close()

    # ------------------------------------------------------------ collectives

    def barrier(self) -> None:
        return self._intercept("barrier", "", None, self.inner.barrier)

    def broadcast(self, data: T, src: int = 0) -> T:
        details = f"{tensor_layout(data)} src={src}"
        return self._intercept("broadcast", details, data, lambda: self.inner.broadcast(data, src))

    def all_reduce(self, data: T, op: ReduceOpLike = "sum") -> T:
        details = f"{signature_of(data)} op={_op_name(op)}"
        return self._intercept("all_reduce", details, data, lambda: self.inner.all_reduce(data, op))

    def reduce_dict(self, mapping: Mapping[str, Any], op: ReduceOpLike = "sum") -> dict[str, Any]:
        details = f"{signature_of(mapping)} op={_op_name(op)}"
        return self._intercept("reduce_dict", details, mapping, lambda: self.inner.reduce_dict(mapping, op))

    def all_gather(self, data: Any) -> list[Any]:
        details = signature_of(data, shapes=False)
        return self._intercept("all_gather", details, data, lambda: self.inner.all_gather(data))

    def all_gather_objects(self, obj: T, *, device: torch.device | str | None = None) -> list[T]:
        return self._intercept("all_gather_objects", "", None, lambda: self.inner.all_gather_objects(obj, device=device))

    def gather_objects(self, obj: T, dst: int = 0, *, device: torch.device | str | None = None) -> list[T] | None:
        run = lambda: self.inner.gather_objects(obj, dst, device=device)  # noqa: E731
        return self._intercept("gather_objects", f"dst={dst}", None, run)

    def broadcast_object(self, obj: T, src: int = 0, *, device: torch.device | str | None = None) -> T:
        run = lambda: self.inner.broadcast_object(obj, src, device=device)  # noqa: E731
        return self._intercept("broadcast_object", f"src={src}", None, run)

    def broadcast_object_list(self, object_list: list[Any], src: int = 0, *, device: torch.device | str | None = None) -> None:
        run = lambda: self.inner.broadcast_object_list(object_list, src, device=device)  # noqa: E731
        return self._intercept("broadcast_object_list", f"src={src}", None, run)

    def scatter_objects(self, objects: Sequence[T] | None, src: int = 0) -> T:
        return self._intercept("scatter_objects", f"src={src}", None, lambda: self.inner.scatter_objects(objects, src))

    def split(self, ranks: Sequence[int]) -> Communicator | None:
        run = lambda: _rewrap(self, self.inner.split(ranks))  # noqa: E731
        return self._intercept("split", f"ranks={sorted(ranks) if isinstance(ranks, Sequence) else ranks!r}", None, run)

    def all_reduce_async(self, tensor: torch.Tensor, op: ReduceOpLike = "sum") -> Handle:
        details = f"{signature_of(tensor)} op={_op_name(op)}"
        return self._intercept("all_reduce_async", details, tensor, lambda: self.inner.all_reduce_async(tensor, op))

    def broadcast_async(self, tensor: torch.Tensor, src: int = 0) -> Handle:
        details = f"{signature_of(tensor)} src={src}"
        return self._intercept("broadcast_async", details, tensor, lambda: self.inner.broadcast_async(tensor, src))

    def all_gather_async(self, tensor: torch.Tensor) -> Handle:
        details = signature_of(tensor, shapes=False)
        return self._intercept("all_gather_async", details, tensor, lambda: self.inner.all_gather_async(tensor))


def _rewrap(wrapper: CommunicatorWrapper, child: Communicator | None) -> Communicator | None:
    return None if child is None else wrapper._wrap_child(child)


def _op_name(op: ReduceOpLike) -> str:
    try:
        return parse_reduce_op(op).value
    except ValueError:
        return repr(op)  # the inner communicator raises the clear error
