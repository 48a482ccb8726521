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

import numpy as np
import torch

from distcomm.agreement import Claim, agree, digest64, explain
from distcomm.conversion import check_transportable, describe, from_tensor, to_tensor
from distcomm.errors import DistCommError, InconsistentInputError, InvalidArgumentError, renamed_failures
from distcomm.nested import flatten, is_container, unflatten
from distcomm.ops import ReduceOp, ReduceOpLike, parse_reduce_op
from distcomm.reduction import (
    INT64_MAX,
    INT64_MIN,
    KIND_CODES,
    PYTHON_KINDS,
    PYTHON_PROTOTYPES,
    ReducePlan,
    int_bits,
    needs_exact,
    plan_reduction,
    promote,
    reduce_alone,
    reduce_exactly,
)
from distcomm.serialization import ObjectCodec, UnsafeObjectError, default_codec, max_payload_bytes

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

    def _transport(self, tensor: torch.Tensor, operation: str) -> torch.Tensor:
        """``tensor`` itself when the backend takes it where it is, else a contiguous copy on ``device``."""
        if self._accepts_device(tensor.device) and tensor.is_contiguous():
            return tensor
        check_transportable(tensor, operation)
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
        place too, and every rank gets ``src``'s structure around them. Anything else
        is returned as ``src``'s value: non-source ranks may pass a placeholder such as
        ``None``. Ranks first agree on which tensors take part (one small collective),
        so a rank that passes a tensor where ``src`` does not, or another shape or
        dtype, makes every rank raise :class:`~distcomm.InconsistentInputError`.
        """
        self._check_open("broadcast")
        src = self._check_rank(src, "src", "broadcast")
        with renamed_failures("broadcast", self.rank):
            leaves, paths, spec = flatten(data)
            tensors = sorted((path, i) for i, (path, leaf) in enumerate(zip(paths, leaves)) if isinstance(leaf, torch.Tensor))
            if self.world_size > 1:
                agree(self, "broadcast", Claim(tuple((path, describe(leaves[i])) for path, i in tensors)))
            if not tensors:
                return self.broadcast_object(data, src)
            if isinstance(data, torch.Tensor):
                self._broadcast_tensor_into(data, src)
                return data
            own = {path: leaves[i] for path, i in tensors}
            skeleton = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
            src_spec, others = self.broadcast_object((spec, skeleton), src)
            src_paths = flatten(unflatten(src_spec, others))[1]
            for path, i in tensors:
                self._broadcast_tensor_into(leaves[i], src)
            return unflatten(src_spec, [own.get(path, leaf) for path, leaf in zip(src_paths, others)])  # type: ignore[no-any-return]

    def _broadcast_tensor_into(self, tensor: torch.Tensor, src: int) -> None:
        carrier = self._transport(tensor, "broadcast")
        self._broadcast_tensor(carrier, src)
        if carrier is not tensor:
            with torch.no_grad():
                tensor.copy_(carrier)

    def all_reduce(self, data: T, op: ReduceOpLike = "sum") -> T:
        """Reduce ``data`` over all ranks with ``op`` (sum, mean, min, max, product).

        Tensors are reduced in place and returned; numbers, NumPy arrays and
        containers come back as new values of the same kind and structure. The mean
        of integers is a float, computed exactly from an integer sum.

        For anything but a lone tensor, ranks first agree on the layout (one small
        collective): dicts are matched by key, Python numbers of different kinds
        combine as Python would (an int and a float give a float), Python ints whose
        sum could leave int64 are summed exactly, and any other difference raises
        :class:`~distcomm.InconsistentInputError` on every rank.
        """
        if self._closed:
            self._check_open("all_reduce")
        reduce_op = parse_reduce_op(op)
        kind = type(data)
        if kind in PYTHON_PROTOTYPES and self.world_size == 1 and (kind is not int or INT64_MIN <= cast(int, data) <= INT64_MAX):
            return reduce_alone(data, reduce_op)  # type: ignore[no-any-return]
        if isinstance(data, torch.Tensor):
            return self._all_reduce_one_tensor(data, reduce_op)  # type: ignore[return-value]
        return self._reduce_structure(data, reduce_op, "all_reduce")  # type: ignore[no-any-return]

    def _all_reduce_one_tensor(self, tensor: torch.Tensor, op: ReduceOp) -> torch.Tensor:
        """The hot path: one tensor, no flattening."""
        plan = plan_reduction(tensor, tensor, op, "all_reduce")
        if plan.transport_dtype != tensor.dtype or plan.mean_dtype not in (None, tensor.dtype):
            return self._all_reduce_leaves([tensor], [""], op)[0]  # type: ignore[no-any-return]
        carrier = self._transport(tensor, "all_reduce")
        self._all_reduce_tensor(carrier, plan.op)
        if plan.mean_dtype is not None or carrier is not tensor:
            with torch.no_grad():  # in place even on a tensor that requires grad, as torch's collectives are
                if plan.mean_dtype is not None:
                    carrier.div_(self.world_size)
                if carrier is not tensor:
                    tensor.copy_(carrier)
        return tensor

    def reduce_dict(self, mapping: Mapping[str, Any], op: ReduceOpLike = "sum") -> dict[str, Any]:
        """Reduce a (nested) dict of metrics in one collective per dtype; return a new dict.

        Unlike :meth:`all_reduce`, tensors in ``mapping`` are left untouched (metrics are
        often tensors still attached to the autograd graph): the result holds new,
        detached tensors. Keys are matched by name across ranks, as in :meth:`all_reduce`.
        """
        self._check_open("reduce_dict")
        if not isinstance(mapping, Mapping):
            raise InvalidArgumentError(f"reduce_dict takes a dict of metrics, got {describe(mapping)}")
        reduce_op = parse_reduce_op(op)
        data = dict(mapping) if not isinstance(mapping, dict) else mapping
        return self._reduce_structure(data, reduce_op, "reduce_dict", detach=True)  # type: ignore[no-any-return]

    def _reduce_structure(self, data: Any, op: ReduceOp, operation: str, *, detach: bool = False) -> Any:
        """Reduce numbers, arrays and nested data: agree on the layout, then reduce the leaves
        in an order every rank shares (sorted by key path), and rebuild the caller's structure."""
        leaves, paths, spec = flatten(data)
        order = sorted(range(len(leaves)), key=paths.__getitem__)
        leaves, paths = [leaves[i] for i in order], [paths[i] for i in order]
        if detach:
            leaves = [leaf.detach().clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        with renamed_failures(operation, self.rank):
            leaves, exact = self._agree_on_leaves(leaves, paths, op, operation)
            reduced = self._all_reduce_leaves(leaves, paths, op, exact=exact, operation=operation)
        results: list[Any] = [None] * len(order)
        for position, value in zip(order, reduced):
            results[position] = value
        return unflatten(spec, results)

    def _agree_on_leaves(self, leaves: list[Any], paths: list[str], op: ReduceOp, operation: str) -> tuple[list[Any], bool]:
        """Check the leaves, agree on their layout with the other ranks, and widen Python
        numbers to the kind every rank can share. Returns the leaves and whether Python
        numbers must be reduced exactly (an int result could leave int64)."""
        layout = [("(op)", f"{operation} {op.value}")]
        kinds = bytearray()
        bits = 0
        problem: InvalidArgumentError | None = None
        for leaf, path in zip(leaves, paths):
            code = KIND_CODES.get(type(leaf))
            if code is not None:
                kinds.append(code)
                layout.append((path, "number"))
                if code == 1:
                    bits = max(bits, int_bits(leaf))
                continue
            try:
                tensor = to_tensor(leaf, operation, path)
                if isinstance(leaf, torch.Tensor):
                    check_transportable(tensor, operation, path)
            except InvalidArgumentError as error:
                problem = problem or error
                layout.append((path, "invalid"))
                continue
            layout.append((path, self._leaf_layout(leaf, tensor)))
        if self.world_size == 1:
            if problem is not None:
                raise problem
            return leaves, needs_exact(op, [bits], 1)
        claim = Claim(tuple(layout), (digest64(bytes(kinds)), bits), str(problem) if problem else None)
        table = agree(self, operation, claim)
        if (table[:, 0] != table[0, 0]).any():
            widest = [max(column) for column in zip(*self.all_gather_objects(bytes(kinds)))]
            wider = iter(PYTHON_KINDS[code] for code in widest)
            leaves = [promote(leaf, next(wider)) if type(leaf) in KIND_CODES else leaf for leaf in leaves]
        return leaves, needs_exact(op, table[:, 1].tolist(), self.world_size)

    def _leaf_layout(self, leaf: Any, tensor: torch.Tensor) -> str:
        """What must match across ranks for one non-number leaf: its kind, dtype, shape and transport device."""
        if isinstance(leaf, torch.Tensor):
            device = tensor.device if self._accepts_device(tensor.device) else self.device
            return f"tensor {describe(tensor)} on {device.type}"
        return f"numpy {'scalar ' if isinstance(leaf, np.generic) else ''}{describe(tensor)}"

    def _all_reduce_leaves(
        self, leaves: list[Any], paths: list[str], op: ReduceOp, *, exact: bool = False, operation: str = "all_reduce"
    ) -> list[Any]:
        """Reduce many leaves with one collective per transport dtype and device.

        Python numbers skip per-leaf tensors: each group of them becomes one tensor in
        one call, which is what makes a dict of fifty metrics cost one collective. With
        ``exact``, Python numbers are instead gathered and reduced as Python numbers.
        """
        tensors: list[torch.Tensor | None] = []
        plans: list[ReducePlan] = []
        groups: dict[tuple[torch.dtype, ReduceOp, torch.device], list[int]] = {}
        numbers: list[int] = []
        for i, (leaf, path) in enumerate(zip(leaves, paths)):
            if type(leaf) in PYTHON_PROTOTYPES:
                tensor, prototype = None, PYTHON_PROTOTYPES[type(leaf)]
                device = self.device
            else:
                tensor = prototype = to_tensor(leaf, operation, path)
                device = tensor.device if self._accepts_device(tensor.device) else self.device
            plan = plan_reduction(leaf, prototype, op, operation)
            tensors.append(tensor)
            plans.append(plan)
            if exact and tensor is None:
                numbers.append(i)
            else:
                groups.setdefault((plan.transport_dtype, plan.op, device), []).append(i)
        results: list[Any] = [None] * len(leaves)
        if numbers:
            columns = list(zip(*self.all_gather_objects([leaves[i] for i in numbers])))
            for i, value in zip(numbers, reduce_exactly(columns, op, self.world_size)):
                results[i] = value
        for (dtype, group_op, device), members in groups.items():
            if all(tensors[i] is None for i in members):  # Python numbers only
                flat = torch.tensor([leaves[i] for i in members], dtype=dtype, device=device)
                self._all_reduce_tensor(flat, group_op)
                mean_dtype = plans[members[0]].mean_dtype
                if mean_dtype is not None:
                    flat = flat.to(mean_dtype).div_(self.world_size)
                for i, value in zip(members, flat.tolist()):
                    results[i] = value
                continue
            parts = [_as_tensor(leaves[i], tensors[i]) for i in members]
            with torch.no_grad():  # collectives are not differentiable; leaves that require grad are filled in place
                flat = torch.cat([t.reshape(-1).to(device=device, dtype=dtype) for t in parts])
                self._all_reduce_tensor(flat, group_op)
                for i, t, part in zip(members, parts, flat.split([t.numel() for t in parts])):  # type: ignore[no-untyped-call]
                    results[i] = self._finish_leaf(leaves[i], part.view(t.shape), plans[i])
        return results

    def _finish_leaf(self, leaf: Any, reduced: torch.Tensor, plan: ReducePlan) -> Any:
        if plan.mean_dtype is not None:
            reduced = reduced.to(plan.mean_dtype).div_(self.world_size)
            if isinstance(leaf, torch.Tensor) and reduced.dtype != leaf.dtype:
                return reduced.to(leaf.device)  # a mean of integers: a new float tensor
        if isinstance(leaf, torch.Tensor):
            leaf.copy_(reduced)
            return leaf
        return from_tensor(reduced, leaf)

    def all_gather(self, data: Any) -> list[Any]:
        """Return a list with every rank's ``data``, in rank order, on every rank.

        Tensors may differ in shape across ranks (not in dtype or number of
        dimensions); each entry is a new tensor on the input's device. Numbers,
        arrays and other values come back as lists of values of the same kind, and
        containers as one structure per rank.
        """
        self._check_open("all_gather")
        with renamed_failures("all_gather", self.rank):
            if isinstance(data, torch.Tensor):
                return self._all_gather_any_shape(data)
            if not is_container(data):
                return self.all_gather_objects(data)
            leaves, _, spec = flatten(data)
            skeleton = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
            per_rank = self.all_gather_objects((spec, skeleton))
            if any(rank_spec != spec for rank_spec, _ in per_rank):
                raise InconsistentInputError(
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
        carrier = self._transport(tensor, "all_gather")
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
        bytes. A rank that cannot take part (a dtype or number of dimensions no slot
        can describe) says so in its slot. Different dtypes or numbers of dimensions,
        or a refusal, raise the same clear error on every rank, since every rank sees
        every header.
        """
        problem = None
        code = _DTYPE_CODES.get(tensor.dtype)
        if code is None:
            problem = f"all_gather does not support dtype {tensor.dtype}; convert the tensor first"
        elif tensor.dim() > _MAX_GATHER_DIMS:
            problem = f"all_gather takes at most {_MAX_GATHER_DIMS} dimensions, got {tensor.dim()}"
        header = np.full(_GATHER_HEADER_WORDS, -1, dtype="<i8")
        nbytes = tensor.numel() * tensor.element_size()
        slot = torch.zeros(OBJECT_SLOT_BYTES, dtype=torch.uint8, device=tensor.device)
        if problem is None:
            header[0], header[1] = tensor.dim(), code
            header[2 : 2 + tensor.dim()] = tensor.shape
            if nbytes <= _GATHER_INLINE_BYTES:
                slot[header.nbytes : header.nbytes + nbytes] = tensor.reshape(-1).view(torch.uint8)
        slot[: header.nbytes] = torch.from_numpy(header.view(np.uint8)).to(tensor.device)
        slots = self._all_gather_tensor(slot)
        headers = [s[: header.nbytes].cpu().numpy().view("<i8") for s in slots]
        if any(h[0] < 0 or not 0 <= h[1] < len(_DTYPES) or h[0] > _MAX_GATHER_DIMS for h in headers):
            claims = self.all_gather_objects((problem, ()))
            raise InconsistentInputError(explain("all_gather", claims))
        shapes = [torch.Size(h[2 : 2 + int(h[0])].tolist()) for h in headers]
        dtypes = [_DTYPES[int(h[1])] for h in headers]
        if len(set(dtypes)) > 1 or len({len(s) for s in shapes}) > 1:
            listing = "; ".join(
                f"rank {r}: {str(d).removeprefix('torch.')}{list(s)}" for r, (d, s) in enumerate(zip(dtypes, shapes))
            )
            raise InconsistentInputError(
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

        Small payloads (under about 4 KB) take one collective; larger ones two. An
        object that cannot be pickled on one rank raises on every rank.
        """
        self._check_open("all_gather_objects")
        with renamed_failures("all_gather_objects", self.rank):
            return [self._decode(p) for p in self._exchange_objects(obj, "all_gather_objects", device)]

    def gather_objects(self, obj: T, dst: int = 0, *, device: torch.device | str | None = None) -> list[T] | None:
        """Every rank's picklable ``obj`` as a list on rank ``dst``; ``None`` on the others."""
        self._check_open("gather_objects")
        dst = self._check_rank(dst, "dst", "gather_objects")
        with renamed_failures("gather_objects", self.rank):
            payloads = self._exchange_objects(obj, "gather_objects", device)
            return [self._decode(p) for p in payloads] if self.rank == dst else None

    def _object_payload(self, obj: Any, operation: str) -> tuple[bytes, InvalidArgumentError | None]:
        """``obj``'s bytes, or, when it cannot be sent, the message to send instead and the error."""
        try:
            payload = self._encode(obj, operation)
        except InvalidArgumentError as error:
            return str(error).encode(), error
        limit = max_payload_bytes(self.object_codec)
        if len(payload) > limit:
            too_large = InvalidArgumentError(
                f"{operation}: the object encodes to {len(payload)} bytes, over the codec's limit of {limit} "
                "bytes; raise it with the codec's max_bytes, or send the data as tensors"
            )
            return str(too_large).encode(), too_large
        return payload, None

    def _exchange_objects(self, obj: Any, operation: str, device: torch.device | str | None) -> list[bytes]:
        payload, refusal = self._object_payload(obj, operation)
        target = self._object_device(device)
        slots = self._all_gather_tensor(_slot(payload, target, refused=refusal is not None))
        arrays = [s.cpu().numpy() for s in slots]
        lengths = [int(a[:_HEADER_BYTES].view("<i8")[0]) for a in arrays]
        if min(lengths) < 0:
            problems = [_refusal_text(a, n) if n < 0 else None for a, n in zip(arrays, lengths)]
            raise InconsistentInputError(explain(operation, [(p, ()) for p in problems])) from refusal
        for rank, n in enumerate(lengths):
            self._check_length(operation, rank, n)
        if max(lengths) <= OBJECT_SLOT_BYTES - _HEADER_BYTES:
            return [a[_HEADER_BYTES : _HEADER_BYTES + n].tobytes() for a, n in zip(arrays, lengths)]
        padded = torch.zeros(max(lengths), dtype=torch.uint8)
        padded[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        full = [g.cpu().numpy() for g in self._all_gather_tensor(padded.to(target))]
        return [a[:n].tobytes() for a, n in zip(full, lengths)]

    def _refused_by(self, src: int, message: str, operation: str) -> str:
        """The message every rank raises when ``src`` sent a refusal instead of its object."""
        return explain(operation, [(message if rank == src else None, ()) for rank in range(self.world_size)])

    def _check_length(self, operation: str, rank: int, n: int) -> None:
        """Refuse a payload size announced by ``rank`` over the codec's limit, before allocating for it."""
        limit = max_payload_bytes(self.object_codec)
        if n > limit:
            raise UnsafeObjectError(
                f"{operation}: rank {rank} announced a payload of {n} bytes, over the codec's limit of "
                f"{limit} bytes; nothing was allocated for it (raise the codec's max_bytes if it is genuine)"
            )

    def broadcast_object(self, obj: T, src: int = 0, *, device: torch.device | str | None = None) -> T:
        """Return ``src``'s picklable ``obj`` on every rank (``src`` gets its own object back).

        An object that cannot be pickled on ``src`` raises on every rank.
        """
        self._check_open("broadcast_object")
        src = self._check_rank(src, "src", "broadcast_object")
        with renamed_failures("broadcast_object", self.rank):
            return self._broadcast_object(obj, src, device, "broadcast_object")  # type: ignore[no-any-return]

    def _broadcast_object(
        self, obj: Any, src: int, device: torch.device | str | None, operation: str, problem: str | None = None
    ) -> Any:
        """The body of object broadcasts; ``src`` sends ``problem`` instead of ``obj`` when it has one."""
        target = self._object_device(device)
        refusal: InvalidArgumentError | None = None
        payload = b""
        if self.rank == src:
            if problem is not None:
                payload, refusal = problem.encode(), InvalidArgumentError(problem)
            else:
                payload, refusal = self._object_payload(obj, operation)
        slot = _slot(payload, target, refused=refusal is not None)
        self._broadcast_tensor(slot, src)
        if self.rank == src:
            if refusal is not None:
                raise InconsistentInputError(self._refused_by(src, payload.decode(), operation)) from refusal
            if len(payload) > OBJECT_SLOT_BYTES - _HEADER_BYTES:
                rest = torch.frombuffer(bytearray(payload[OBJECT_SLOT_BYTES - _HEADER_BYTES :]), dtype=torch.uint8)
                self._broadcast_tensor(rest.to(target), src)
            return obj
        head = slot.cpu().numpy()
        length = int(head[:_HEADER_BYTES].view("<i8")[0])
        if length < 0:
            raise InconsistentInputError(self._refused_by(src, _refusal_text(head, length), operation))
        self._check_length(operation, src, length)
        data = head[_HEADER_BYTES : _HEADER_BYTES + length].tobytes()
        if length > len(data):
            rest = torch.empty(length - len(data), dtype=torch.uint8, device=target)
            self._broadcast_tensor(rest, src)
            data += rest.cpu().numpy().tobytes()
        return self._decode(data)

    def broadcast_object_list(
        self, object_list: list[Any], src: int = 0, *, device: torch.device | str | None = None
    ) -> None:
        """Replace, in place, the items of ``object_list`` on every rank by ``src``'s items.

        Every rank must pass a list; a rank that does not makes every rank raise.
        """
        self._check_open("broadcast_object_list")
        src = self._check_rank(src, "src", "broadcast_object_list")
        problem = None
        if not isinstance(object_list, list):
            problem = f"broadcast_object_list needs a list to fill in place, got {describe(object_list)}"
        with renamed_failures("broadcast_object_list", self.rank):
            if self.world_size > 1:
                agree(self, "broadcast_object_list", Claim((), problem=problem))
            elif problem is not None:
                raise InvalidArgumentError(problem)
            received = self._broadcast_object(object_list, src, device, "broadcast_object_list")
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
                message = f"src rank {src} must pass a sequence, got {describe(objects)}"
            elif len(objects) != self.world_size:
                message = f"src rank {src} passed {len(objects)} objects for {self.world_size} ranks; pass exactly one per rank"
        with renamed_failures("scatter_objects", self.rank):
            payload = list(objects or []) if message is None else None
            received = self._broadcast_object(payload, src, None, "scatter_objects", problem=message)
        return received[self.rank]  # type: ignore[no-any-return]

    # --------------------------------------------------------- sub-communicators

    def split(self, ranks: Sequence[int]) -> Communicator | None:
        """Make a communicator over ``ranks`` (this communicator's numbering); call it on every rank.

        Members get a communicator whose ranks are renumbered 0.. in the order of
        ``sorted(ranks)``; the other ranks get ``None``. Every rank must pass the same
        ranks: ranks first agree on them, and a difference raises on every rank.
        """
        self._check_open("split")
        members: list[int] = []
        problem: InvalidArgumentError | None = None
        try:
            members = self._split_members(ranks)
        except InvalidArgumentError as error:
            problem = error
        with renamed_failures("split", self.rank):
            if self.world_size > 1:
                agree(self, "split", Claim((("ranks", repr(members)),), problem=str(problem) if problem else None))
            elif problem is not None:
                raise problem
            return self._split(members)

    def _split_members(self, ranks: Sequence[int]) -> list[int]:
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
            raise InvalidArgumentError(f"split takes a sequence of ranks, got {describe(ranks)}")
        members = sorted({self._check_rank(r, "a rank", "split") for r in ranks})
        if len(members) != len(ranks):
            raise InvalidArgumentError(f"split: ranks {list(ranks)} name a rank twice")
        if not members:
            raise InvalidArgumentError("split: give at least one rank")
        return members

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
        plan = plan_reduction(tensor, tensor, reduce_op, "all_reduce_async")
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


def _as_tensor(leaf: Any, tensor: torch.Tensor | None) -> torch.Tensor:
    return tensor if tensor is not None else to_tensor(leaf, "all_reduce")


_DTYPES: list[torch.dtype] = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.uint16, torch.uint32, torch.uint64,
]  # fmt: skip
"""The dtypes a gather header can name; a dtype's code is its index (new ones go at the end)."""
_DTYPE_CODES = {dtype: code for code, dtype in enumerate(_DTYPES)}


def _slot(payload: bytes, device: torch.device, *, refused: bool = False) -> torch.Tensor:
    """A fixed-size buffer: an 8-byte length, then as much of the payload as fits.

    A rank that cannot send its object sends the reason instead, with the length negated.
    """
    if refused:
        payload = payload[: OBJECT_SLOT_BYTES - _HEADER_BYTES] or b"?"
    slot = np.zeros(OBJECT_SLOT_BYTES, dtype=np.uint8)
    slot[:_HEADER_BYTES] = np.array([-len(payload) if refused else len(payload)], dtype="<i8").view(np.uint8)
    head = payload[: OBJECT_SLOT_BYTES - _HEADER_BYTES]
    slot[_HEADER_BYTES : _HEADER_BYTES + len(head)] = np.frombuffer(head, dtype=np.uint8)
    return torch.from_numpy(slot).to(device)


def _refusal_text(slot: np.ndarray, length: int) -> str:
    """The reason a rank sent in its slot instead of an object (``length`` is negative)."""
    size = min(-length, OBJECT_SLOT_BYTES - _HEADER_BYTES)
    return bytes(slot[_HEADER_BYTES : _HEADER_BYTES + size]).decode(errors="replace")
