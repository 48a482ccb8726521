"""The abstract :class:`Communicator`: what every rank can ask of the others.

The public methods live here, once, and take every kind of input (tensors, Python
numbers, NumPy arrays, nested dicts/lists/tuples of those). They turn the input into
tensors, call a handful of tensor primitives that each subclass implements, and turn
the results back into the kind that came in. Because that logic is shared, a
:class:`~distcomm.LocalCommunicator` gives back exactly what a
:class:`~distcomm.TorchDistCommunicator` gives back, at any world size.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast

import attrs
import numpy as np
import torch

from distcomm.conversion import describe, from_tensor, is_python_number, to_tensor
from distcomm.errors import DistCommError, InvalidArgumentError
from distcomm.nested import flatten, is_container, unflatten
from distcomm.ops import ReduceOp, ReduceOpLike, parse_reduce_op
from distcomm.serialization import ObjectCodec, default_codec

T = TypeVar("T")
C = TypeVar("C", bound="Communicator")

OBJECT_SLOT_BYTES = 4096
"""Object collectives send payloads up to this size (header included) in one collective."""
_HEADER_BYTES = 8
_MAX_GATHER_DIMS = 16
_GATHER_HEADER_WORDS = 2 + _MAX_GATHER_DIMS
_GATHER_INLINE_BYTES = OBJECT_SLOT_BYTES - 8 * _GATHER_HEADER_WORDS


class Handle(abc.ABC):
    """An asynchronous collective in flight; :meth:`wait` returns its result."""

    @abc.abstractmethod
    def wait(self) -> Any:
        """Block until the collective is done and return its result."""

    @abc.abstractmethod
    def is_completed(self) -> bool:
        """Whether :meth:`wait` would return at once."""


class CompletedHandle(Handle):
    """A handle for work that already finished (used where no async path exists)."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def wait(self) -> Any:
        return self._result

    def is_completed(self) -> bool:
        return True


@attrs.frozen
class _Refused:
    """Sent in place of data when the source rank found its input invalid, so every rank raises."""

    message: str


@attrs.frozen
class _ReducePlan:
    """How one leaf travels through a reduction: the dtype it travels as, the op, and
    for a mean the dtype its result is divided in."""

    transport_dtype: torch.dtype
    op: ReduceOp
    mean_dtype: torch.dtype | None = None


def _plan_reduction(template: Any, tensor: torch.Tensor, op: ReduceOp, operation: str) -> _ReducePlan:
    """Decide how a leaf is reduced, so that the result kind depends only on the input.

    * A mean of integers or bools is exact: summed as int64, then divided as floats.
    * Bool tensors and arrays keep torch's and NumPy's logic: sum is "any", product
      "all", min "all", max "any", and they stay bool. A Python ``bool`` counts as an
      ``int`` for sum and product, as it does in Python.
    """
    dtype = tensor.dtype
    if dtype.is_complex and op in (ReduceOp.MIN, ReduceOp.MAX):
        raise InvalidArgumentError(f"{operation}: op {op.value!r} is not defined for complex values ({describe(template)})")
    exact = dtype.is_floating_point or dtype.is_complex
    if op is ReduceOp.MEAN:
        if exact:
            return _ReducePlan(dtype, ReduceOp.SUM, dtype)
        to = torch.get_default_dtype() if isinstance(template, torch.Tensor) else torch.float64
        return _ReducePlan(torch.int64, ReduceOp.SUM, to)
    if dtype == torch.bool:
        if is_python_number(template) and op in (ReduceOp.SUM, ReduceOp.PRODUCT):
            return _ReducePlan(torch.int64, op)
        logical = {ReduceOp.SUM: ReduceOp.MAX, ReduceOp.PRODUCT: ReduceOp.MIN}
        return _ReducePlan(torch.bool, logical.get(op, op))
    return _ReducePlan(dtype, op)


class Communicator(abc.ABC):
    """One object to talk to the other ranks of a job.

    Subclasses implement the identity properties and the tensor primitives (the
    methods whose names start with an underscore); everything else is shared.
    """

    # ------------------------------------------------------------------ identity

    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """This process's rank in the communicator, from 0 to ``world_size - 1``."""

    @property
    @abc.abstractmethod
    def world_size(self) -> int:
        """How many ranks the communicator has."""

    @property
    @abc.abstractmethod
    def local_rank(self) -> int:
        """This process's rank among the processes on its machine."""

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """The device this communicator's collectives use for data that is not a tensor."""

    @property
    @abc.abstractmethod
    def backend(self) -> str:
        """The backend's name: ``"gloo"``, ``"nccl"``, ``"mpi"`` or ``"local"``."""

    @property
    def is_master(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    # --------------------------------------------------------------- primitives

    @abc.abstractmethod
    def _barrier(self) -> None:
        """Block until every rank arrives."""

    @abc.abstractmethod
    def _broadcast_tensor(self, tensor: torch.Tensor, src: int) -> None:
        """Fill ``tensor`` in place with ``src``'s tensor."""

    @abc.abstractmethod
    def _all_reduce_tensor(self, tensor: torch.Tensor, op: ReduceOp) -> None:
        """Reduce ``tensor`` in place (``op`` is never ``MEAN``)."""

    @abc.abstractmethod
    def _all_gather_tensor(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """New tensors, one per rank, when every rank's tensor has the same shape."""

    @abc.abstractmethod
    def _accepts_device(self, device: torch.device) -> bool:
        """Whether tensors on ``device`` can be passed to the primitives as they are."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release what the communicator holds."""

    def _all_reduce_tensor_async(self, tensor: torch.Tensor, op: ReduceOp) -> Handle:
        """Start an in-place reduction; subclasses with a real async path override this."""
        self._all_reduce_tensor(tensor, op)
        return CompletedHandle(tensor)

    def _broadcast_tensor_async(self, tensor: torch.Tensor, src: int) -> Handle:
        """Start an in-place broadcast; subclasses with a real async path override this."""
        self._broadcast_tensor(tensor, src)
        return CompletedHandle(tensor)

    def _all_gather_uneven(self, tensor: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
        """Gather tensors whose shapes differ across ranks: pad, gather, then trim."""
        longest = max(shape.numel() for shape in shapes)
        if tensor.numel() == longest:  # the longest rank sends its tensor as it is
            padded = tensor.reshape(-1)
        else:
            padded = torch.empty(longest, dtype=tensor.dtype, device=tensor.device)
            padded[: tensor.numel()] = tensor.reshape(-1)
            padded[tensor.numel() :] = 0
        gathered = self._all_gather_tensor(padded)
        return [g[: shape.numel()].reshape(shape) for g, shape in zip(gathered, shapes)]

    # ---------------------------------------------------------- object codec

    @property
    def object_codec(self) -> ObjectCodec:
        """How object collectives serialize: plain pickle, or a :class:`~distcomm.serialization.RestrictedCodec`."""
        codec = getattr(self, "_object_codec", None)
        if codec is None:
            codec = self._object_codec = default_codec()
        return codec

    @object_codec.setter
    def object_codec(self, codec: ObjectCodec) -> None:
        if not (callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))):
            raise InvalidArgumentError(f"an object codec needs encode() and decode(), got {codec!r}")
        self._object_codec = codec

    def _encode(self, obj: Any, operation: str) -> bytes:
        try:
            return self.object_codec.encode(obj)
        except Exception as error:
            raise InvalidArgumentError(f"{operation}: the object cannot be pickled: {error}") from error

    def _decode(self, payload: bytes) -> Any:
        return self.object_codec.decode(payload)

    # -------------------------------------------------------------- life cycle

    _closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the communicator; calling it again is harmless."""
        if not self.closed:
            self._closed = True
            self._close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self, operation: str) -> None:
        if self._closed:
            raise DistCommError(f"{operation} on a closed {type(self).__name__}: create a new communicator")

    def _check_rank(self, value: Any, name: str, operation: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidArgumentError(f"{operation}: {name} must be an int rank, got {describe(value)}")
        if not 0 <= value < self.world_size:
            raise InvalidArgumentError(
                f"{operation}: {name}={value} is outside the group; ranks go from 0 to {self.world_size - 1}"
            )
        return int(value)

    def _transport(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` itself when the backend takes it where it is, else a contiguous copy on ``device``."""
        if self._accepts_device(tensor.device) and tensor.is_contiguous():
            return tensor
        return tensor.to(self.device, memory_format=torch.contiguous_format, copy=True)

    # -------------------------------------------------------------- collectives

    def barrier(self) -> None:
        """Block until every rank has called ``barrier``."""
        self._check_open("barrier")
        self._barrier()

    def broadcast(self, data: T, src: int = 0) -> T:
        """Send ``src``'s ``data`` to every rank.

        A tensor is filled in place and returned (every rank passes a tensor of the
        same shape and dtype). Tensors inside dicts, lists and tuples are filled in
        place too. Anything else is returned as ``src``'s value: non-source ranks may
        pass a placeholder such as ``None``.
        """
        self._check_open("broadcast")
        src = self._check_rank(src, "src", "broadcast")
        if isinstance(data, torch.Tensor):
            self._broadcast_tensor_into(data, src)
            return data
        leaves, _, spec = flatten(data)
        tensor_positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        if not tensor_positions:
            return self.broadcast_object(data, src)
        others = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        others = self.broadcast_object(others, src)
        if len(others) != len(leaves):
            raise InvalidArgumentError(
                f"broadcast: rank {self.rank} passed a structure with {len(leaves)} leaves, "
                f"but src rank {src} passed {len(others)}"
            )
        for i in tensor_positions:
            self._broadcast_tensor_into(leaves[i], src)
            others[i] = leaves[i]
        return unflatten(spec, others)  # type: ignore[no-any-return]

    def _broadcast_tensor_into(self, tensor: torch.Tensor, src: int) -> None:
        carrier = self._transport(tensor)
        self._broadcast_tensor(carrier, src)
        if carrier is not tensor:
            tensor.copy_(carrier)

    def all_reduce(self, data: T, op: ReduceOpLike = "sum") -> T:
        """Reduce ``data`` over all ranks with ``op`` (sum, mean, min, max, product).

        Tensors are reduced in place and returned; numbers, NumPy arrays and
        containers come back as new values of the same kind and structure. The mean
        of integers is a float, computed exactly from an integer sum.
        """
        if self._closed:
            self._check_open("all_reduce")
        reduce_op = parse_reduce_op(op)
        kind = type(data)
        if kind in _PYTHON_PROTOTYPES and self.world_size == 1 and (kind is not int or INT64_MIN <= cast(int, data) <= INT64_MAX):
            return reduce_alone(data, reduce_op)  # type: ignore[no-any-return]
        if isinstance(data, torch.Tensor):
            return self._all_reduce_one_tensor(data, reduce_op)  # type: ignore[return-value]
        if not is_container(data):
            return self._all_reduce_leaves([data], [""], reduce_op)[0]  # type: ignore[no-any-return]
        leaves, paths, spec = flatten(data)
        return unflatten(spec, self._all_reduce_leaves(leaves, paths, reduce_op))  # type: ignore[no-any-return]

    def _all_reduce_one_tensor(self, tensor: torch.Tensor, op: ReduceOp) -> torch.Tensor:
        """The hot path: one tensor, no flattening."""
        plan = _plan_reduction(tensor, tensor, op, "all_reduce")
        if plan.transport_dtype != tensor.dtype or plan.mean_dtype not in (None, tensor.dtype):
            return self._all_reduce_leaves([tensor], [""], op)[0]  # type: ignore[no-any-return]
        carrier = self._transport(tensor)
        self._all_reduce_tensor(carrier, plan.op)
        if plan.mean_dtype is not None:
            carrier.div_(self.world_size)
        if carrier is not tensor:
            tensor.copy_(carrier)
        return tensor

    def _all_reduce_leaves(self, leaves: list[Any], paths: list[str], op: ReduceOp) -> list[Any]:
        """Reduce many leaves with one collective per transport dtype and device.

        Python numbers skip per-leaf tensors: each group of them becomes one tensor in
        one call, which is what makes a dict of fifty metrics cost one collective.
        """
        tensors: list[torch.Tensor | None] = []
        plans: list[_ReducePlan] = []
        groups: dict[tuple[torch.dtype, ReduceOp, torch.device], list[int]] = {}
        for i, (leaf, path) in enumerate(zip(leaves, paths)):
            if type(leaf) in _PYTHON_PROTOTYPES:
                tensor, prototype = None, _PYTHON_PROTOTYPES[type(leaf)]
                device = self.device
            else:
                tensor = prototype = to_tensor(leaf, "all_reduce", path)
                device = tensor.device if self._accepts_device(tensor.device) else self.device
            plan = _plan_reduction(leaf, prototype, op, "all_reduce")
            tensors.append(tensor)
            plans.append(plan)
            groups.setdefault((plan.transport_dtype, plan.op, device), []).append(i)
        results: list[Any] = [None] * len(leaves)
        for (dtype, group_op, device), members in groups.items():
            if all(tensors[i] is None for i in members):  # Python numbers only
                try:
                    flat = torch.tensor([leaves[i] for i in members], dtype=dtype, device=device)
                except (RuntimeError, OverflowError):  # an int beyond 64 bits: name it
                    for i in members:
                        to_tensor(leaves[i], "all_reduce", paths[i])
                    raise
                self._all_reduce_tensor(flat, group_op)
                mean_dtype = plans[members[0]].mean_dtype
                if mean_dtype is not None:
                    flat = flat.to(mean_dtype).div_(self.world_size)
                for i, value in zip(members, flat.tolist()):
                    results[i] = value
                continue
            parts = [_as_tensor(leaves[i], tensors[i]) for i in members]
            flat = torch.cat([t.reshape(-1).to(device=device, dtype=dtype) for t in parts])
            self._all_reduce_tensor(flat, group_op)
            for i, t, part in zip(members, parts, flat.split([t.numel() for t in parts])):  # type: ignore[no-untyped-call]
                results[i] = self._finish_leaf(leaves[i], part.view(t.shape), plans[i])
        return results

    def _finish_leaf(self, leaf: Any, reduced: torch.Tensor, plan: _ReducePlan) -> Any:
        if plan.mean_dtype is not None:
            reduced = reduced.to(plan.mean_dtype).div_(self.world_size)
            if isinstance(leaf, torch.Tensor) and reduced.dtype != leaf.dtype:
                return reduced.to(leaf.device)  # a mean of integers: a new float tensor
        if isinstance(leaf, torch.Tensor):
            leaf.copy_(reduced)
            return leaf
        return from_tensor(reduced, leaf)

    def reduce_dict(self, mapping: Mapping[str, Any], op: ReduceOpLike = "sum") -> dict[str, Any]:
        """Reduce a (nested) dict of metrics in one collective per dtype; return a new dict.

        Unlike :meth:`all_reduce`, tensors in ``mapping`` are left untouched (metrics are
        often tensors still attached to the autograd graph): the result holds new,
        detached tensors.
        """
        self._check_open("reduce_dict")
        if not isinstance(mapping, Mapping):
            raise InvalidArgumentError(f"reduce_dict takes a dict of metrics, got {describe(mapping)}")
        reduce_op = parse_reduce_op(op)
        leaves, paths, spec = flatten(dict(mapping) if not isinstance(mapping, dict) else mapping)
        detached = [leaf.detach().clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        return unflatten(spec, self._all_reduce_leaves(detached, paths, reduce_op))  # type: ignore[no-any-return]

    def all_gather(self, data: Any) -> list[Any]:
        """Return a list with every rank's ``data``, in rank order, on every rank.

        Tensors may differ in shape across ranks (not in dtype or number of
        dimensions); each entry is a new tensor on the input's device. Numbers,
        arrays and other values come back as lists of values of the same kind, and
        containers as one structure per rank.
        """
        self._check_open("all_gather")
        if isinstance(data, torch.Tensor):
            return self._all_gather_any_shape(data)
        if not is_container(data):
            return self.all_gather_objects(data)
        leaves, _, spec = flatten(data)
        skeleton = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        per_rank = self.all_gather_objects((spec, skeleton))
        if any(rank_spec != spec for rank_spec, _ in per_rank):
            raise InvalidArgumentError(
                "all_gather: ranks passed differently shaped structures: "
                + "; ".join(f"rank {r}: {s}" for r, (s, _) in enumerate(per_rank))
            )
        columns = {i: self._all_gather_any_shape(leaf) for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)}
        out = []
        for r, (_, rank_leaves) in enumerate(per_rank):
            out.append(unflatten(spec, [columns[i][r] if i in columns else v for i, v in enumerate(rank_leaves)]))
        return out

    def _all_gather_any_shape(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return self._gather_any_shape(tensor, asynchronous=False).wait()  # type: ignore[no-any-return]

    def _gather_any_shape(self, tensor: torch.Tensor, *, asynchronous: bool) -> Handle:
        """Gather tensors of any shapes: one collective when every rank's tensor is small
        (it travels inline with its shape header), else the headers then the data, which
        moves asynchronously when asked and the shapes are equal."""
        carrier = self._transport(tensor)
        inline, shapes = self._exchange_headers(carrier)
        if inline is not None:
            return CompletedHandle([t.to(tensor.device) for t in inline])
        if all(s == shapes[0] for s in shapes):
            if asynchronous:
                return self._all_gather_tensor_async(carrier, tensor.device)
            gathered = self._all_gather_tensor(carrier)
        else:
            gathered = self._all_gather_uneven(carrier, shapes)
        return CompletedHandle(gathered if carrier is tensor else [g.to(tensor.device) for g in gathered])

    def _exchange_headers(self, tensor: torch.Tensor) -> tuple[list[torch.Tensor] | None, list[torch.Size]]:
        """Every rank's shape, and every rank's tensor too when all of them fit in a slot.

        Each rank sends a fixed-size slot: its dtype, shape and (when it fits) its
        bytes. Different dtypes or numbers of dimensions raise the same clear error on
        every rank, since every rank sees every header.
        """
        if tensor.dim() > _MAX_GATHER_DIMS:
            raise InvalidArgumentError(f"all_gather: at most {_MAX_GATHER_DIMS} dimensions, got {tensor.dim()}")
        header = np.full(_GATHER_HEADER_WORDS, -1, dtype="<i8")
        header[0], header[1] = tensor.dim(), _dtype_code(tensor.dtype)
        header[2 : 2 + tensor.dim()] = tensor.shape
        nbytes = tensor.numel() * tensor.element_size()
        slot = torch.zeros(OBJECT_SLOT_BYTES, dtype=torch.uint8, device=tensor.device)
        slot[: header.nbytes] = torch.from_numpy(header.view(np.uint8)).to(tensor.device)
        if nbytes <= _GATHER_INLINE_BYTES:
            slot[header.nbytes : header.nbytes + nbytes] = tensor.reshape(-1).view(torch.uint8)
        slots = self._all_gather_tensor(slot)
        headers = [s[: header.nbytes].cpu().numpy().view("<i8") for s in slots]
        shapes = [torch.Size(h[2 : 2 + int(h[0])].tolist()) for h in headers]
        dtypes = [_DTYPES[int(h[1])] for h in headers]
        if len(set(dtypes)) > 1 or len({len(s) for s in shapes}) > 1:
            listing = "; ".join(
                f"rank {r}: {str(d).removeprefix('torch.')}{list(s)}" for r, (d, s) in enumerate(zip(dtypes, shapes))
            )
            raise InvalidArgumentError(
                f"all_gather: every rank must pass the same dtype and number of dimensions ({listing}); "
                "convert with .to(dtype) or reshape before gathering"
            )
        sizes = [shape.numel() * tensor.element_size() for shape in shapes]
        if max(sizes) > _GATHER_INLINE_BYTES:
            return None, shapes
        start = header.nbytes
        inline = [s[start : start + n].view(tensor.dtype).reshape(shape).clone() for s, n, shape in zip(slots, sizes, shapes)]
        return inline, shapes

    # ------------------------------------------------------- object collectives

    def _object_device(self, device: torch.device | str | None) -> torch.device:
        return self.device if device is None else torch.device(device)

    def all_gather_objects(self, obj: T, *, device: torch.device | str | None = None) -> list[T]:
        """Every rank's picklable ``obj``, in rank order, on every rank.

        Small payloads (under about 4 KB) take one collective; larger ones two.
        """
        self._check_open("all_gather_objects")
        return [self._decode(p) for p in self._exchange_objects(obj, "all_gather_objects", device)]

    def gather_objects(self, obj: T, dst: int = 0, *, device: torch.device | str | None = None) -> list[T] | None:
        """Every rank's picklable ``obj`` as a list on rank ``dst``; ``None`` on the others."""
        self._check_open("gather_objects")
        dst = self._check_rank(dst, "dst", "gather_objects")
        payloads = self._exchange_objects(obj, "gather_objects", device)
        return [self._decode(p) for p in payloads] if self.rank == dst else None

    def _exchange_objects(self, obj: Any, operation: str, device: torch.device | str | None) -> list[bytes]:
        payload = self._encode(obj, operation)
        target = self._object_device(device)
        slots = self._all_gather_tensor(_slot(payload, target))
        arrays = [s.cpu().numpy() for s in slots]
        lengths = [int(a[:_HEADER_BYTES].view("<i8")[0]) for a in arrays]
        if max(lengths) <= OBJECT_SLOT_BYTES - _HEADER_BYTES:
            return [a[_HEADER_BYTES : _HEADER_BYTES + n].tobytes() for a, n in zip(arrays, lengths)]
        padded = torch.zeros(max(lengths), dtype=torch.uint8)
        padded[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        full = [g.cpu().numpy() for g in self._all_gather_tensor(padded.to(target))]
        return [a[:n].tobytes() for a, n in zip(full, lengths)]

    def broadcast_object(self, obj: T, src: int = 0, *, device: torch.device | str | None = None) -> T:
        """Return ``src``'s picklable ``obj`` on every rank (``src`` gets its own object back)."""
        self._check_open("broadcast_object")
        src = self._check_rank(src, "src", "broadcast_object")
        target = self._object_device(device)
        payload = self._encode(obj, "broadcast_object") if self.rank == src else b""
        slot = _slot(payload, target)
        self._broadcast_tensor(slot, src)
        if self.rank == src:
            if len(payload) > OBJECT_SLOT_BYTES - _HEADER_BYTES:
                rest = torch.frombuffer(bytearray(payload[OBJECT_SLOT_BYTES - _HEADER_BYTES :]), dtype=torch.uint8)
                self._broadcast_tensor(rest.to(target), src)
            return obj
        head = slot.cpu().numpy()
        length = int(head[:_HEADER_BYTES].view("<i8")[0])
        data = head[_HEADER_BYTES : _HEADER_BYTES + length].tobytes()
        if length > len(data):
            rest = torch.empty(length - len(data), dtype=torch.uint8, device=target)
            self._broadcast_tensor(rest, src)
            data += rest.cpu().numpy().tobytes()
        return self._decode(data)  # type: ignore[no-any-return]

    def broadcast_object_list(
        self, object_list: list[Any], src: int = 0, *, device: torch.device | str | None = None
    ) -> None:
        """Replace, in place, the items of ``object_list`` on every rank by ``src``'s items."""
        if not isinstance(object_list, list):
            raise InvalidArgumentError(
                f"broadcast_object_list needs a list to fill in place, got {describe(object_list)}"
            )
        received = self.broadcast_object(object_list, src, device=device)
        if received is not object_list:
            object_list[:] = received

    def scatter_objects(self, objects: Sequence[T] | None, src: int = 0) -> T:
        """Give rank ``i`` the item ``objects[i]`` of ``src``'s sequence (others pass ``None``).

        A ``src`` sequence of the wrong length fails on every rank, not only on ``src``.
        """
        self._check_open("scatter_objects")
        src = self._check_rank(src, "src", "scatter_objects")
        message = None
        if self.rank == src:
            if isinstance(objects, (str, bytes)) or not isinstance(objects, Sequence):
                message = f"scatter_objects: src rank {src} must pass a sequence, got {describe(objects)}"
            elif len(objects) != self.world_size:
                message = (
                    f"scatter_objects: src rank {src} passed {len(objects)} objects for "
                    f"{self.world_size} ranks; pass exactly one per rank"
                )
        received = self.broadcast_object(_Refused(message) if message else list(objects or []), src)
        if isinstance(received, _Refused):
            raise InvalidArgumentError(received.message)
        return received[self.rank]

    # --------------------------------------------------------- sub-communicators

    def split(self, ranks: Sequence[int]) -> Communicator | None:
        """Make a communicator over ``ranks`` (this communicator's numbering); call it on every rank.

        Members get a communicator whose ranks are renumbered 0.. in the order of
        ``sorted(ranks)``; the other ranks get ``None``.
        """
        self._check_open("split")
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
            raise InvalidArgumentError(f"split takes a sequence of ranks, got {describe(ranks)}")
        members = sorted({self._check_rank(r, "a rank", "split") for r in ranks})
        if len(members) != len(ranks):
            raise InvalidArgumentError(f"split: ranks {list(ranks)} name a rank twice")
        if not members:
            raise InvalidArgumentError("split: give at least one rank")
        return self._split(members)

    @abc.abstractmethod
    def _split(self, members: list[int]) -> Communicator | None:
        """A communicator over ``members`` (sorted, valid) for members, ``None`` for others."""

    # ---------------------------------------------------------- async variants

    def all_reduce_async(self, tensor: torch.Tensor, op: ReduceOpLike = "sum") -> Handle:
        """Start an in-place reduction of ``tensor``; the handle's ``wait()`` returns it."""
        self._check_open("all_reduce_async")
        reduce_op = parse_reduce_op(op)
        if not isinstance(tensor, torch.Tensor) or not self._accepts_device(tensor.device) or not tensor.is_contiguous():
            return CompletedHandle(self.all_reduce(tensor, reduce_op))
        plan = _plan_reduction(tensor, tensor, reduce_op, "all_reduce_async")
        if plan.transport_dtype != tensor.dtype or plan.mean_dtype is not None:
            return CompletedHandle(self.all_reduce(tensor, reduce_op))
        return self._all_reduce_tensor_async(tensor, plan.op)

    def broadcast_async(self, tensor: torch.Tensor, src: int = 0) -> Handle:
        """Start an in-place broadcast of ``tensor`` from ``src``; ``wait()`` returns it."""
        self._check_open("broadcast_async")
        src = self._check_rank(src, "src", "broadcast_async")
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(f"broadcast_async takes a tensor, got {describe(tensor)}")
        if not self._accepts_device(tensor.device) or not tensor.is_contiguous():
            return CompletedHandle(self.broadcast(tensor, src))
        return self._broadcast_tensor_async(tensor, src)

    def all_gather_async(self, tensor: torch.Tensor) -> Handle:
        """Start gathering ``tensor`` from every rank; ``wait()`` returns the list.

        Shapes may differ across ranks; they are exchanged first (a small synchronous
        step), then the data moves asynchronously.
        """
        self._check_open("all_gather_async")
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(f"all_gather_async takes a tensor, got {describe(tensor)}")
        return self._gather_any_shape(tensor, asynchronous=True)

    def _all_gather_tensor_async(self, tensor: torch.Tensor, home: torch.device) -> Handle:
        """Start an equal-shape gather; subclasses with a real async path override this."""
        return CompletedHandle([g.to(home) for g in self._all_gather_tensor(tensor)])


_PYTHON_PROTOTYPES: dict[type, torch.Tensor] = {
    bool: torch.tensor(False), int: torch.tensor(0), float: torch.tensor(0.0, dtype=torch.float64),
    complex: torch.tensor(0j, dtype=torch.complex128),
}  # fmt: skip
"""A 0-d tensor of the dtype each Python number type travels as (only its dtype is read)."""


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def reduce_alone(value: Any, op: ReduceOp) -> Any:
    """What reducing one Python number over a world of one gives: exactly the general
    path's result, decided by the same rules (:func:`_plan_reduction`)."""
    prototype = _PYTHON_PROTOTYPES[type(value)]
    plan = _plan_reduction(value, prototype, op, "all_reduce")
    if plan.mean_dtype is not None:
        return complex(value) if plan.mean_dtype.is_complex else float(value)
    if plan.transport_dtype != prototype.dtype:  # a bool summed or multiplied counts as an int
        return int(value)
    return value


def _as_tensor(leaf: Any, tensor: torch.Tensor | None) -> torch.Tensor:
    return tensor if tensor is not None else to_tensor(leaf, "all_reduce")


_DTYPES: list[torch.dtype] = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
]  # fmt: skip
_DTYPE_CODES = {dtype: code for code, dtype in enumerate(_DTYPES)}


def _dtype_code(dtype: torch.dtype) -> int:
    try:
        return _DTYPE_CODES[dtype]
    except KeyError:
        raise InvalidArgumentError(f"all_gather does not support dtype {dtype}; convert the tensor first") from None


def _slot(payload: bytes, device: torch.device) -> torch.Tensor:
    """A fixed-size buffer: an 8-byte length, then as much of the payload as fits."""
    slot = np.zeros(OBJECT_SLOT_BYTES, dtype=np.uint8)
    slot[:_HEADER_BYTES] = np.array([len(payload)], dtype="<i8").view(np.uint8)
    head = payload[: OBJECT_SLOT_BYTES - _HEADER_BYTES]
    slot[_HEADER_BYTES : _HEADER_BYTES + len(head)] = np.frombuffer(head, dtype=np.uint8)
    return torch.from_numpy(slot).to(device)
