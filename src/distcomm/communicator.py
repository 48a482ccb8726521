"""The :class:`Communicator`: what every rank can ask of the others, over any backend.

Every public method is given its meaning here, once, for every kind of input (tensors,
Python numbers, NumPy arrays, nested dicts/lists/tuples of those) and every
:class:`~distcomm.backend.Backend`. The work itself lives in modules named for it
(:mod:`~distcomm.reducing`, :mod:`~distcomm.broadcasting`, :mod:`~distcomm.gathering`,
:mod:`~distcomm.objects`); this class checks arguments, passes each call through the
hooks (:mod:`distcomm.hooks`) and hands it on. Because the logic is shared, a
:class:`~distcomm.LocalCommunicator` gives back exactly what a
:class:`~distcomm.TorchDistCommunicator` gives back, at any world size.

Results: a tensor is filled in place and returned whenever the result has the
tensor's dtype; the one exception, the mean of an integer or bool tensor, returns a
new floating tensor and leaves the input alone (an integer tensor cannot hold it).
Everything else (numbers, arrays, containers) comes back as a new value of the same
kind and structure.

Tested by every collective's tests: tests/test_collectives.py, tests/test_invariance.py, tests/test_agreement.py, tests/test_opening.py.
"""

from __future__ import annotations

import abc
import datetime
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast, overload

import torch

from distcomm import broadcasting, gathering, reducing
from distcomm.agreement import Claim, agree
from distcomm.backend import Backend
from distcomm.channel import Channel, SharedState
from distcomm.conversion import check_rank, describe
from distcomm.errors import InvalidArgumentError
from distcomm.flight_recorder import FlightRecorder, default_recorder
from distcomm.handles import CompletedHandle, Handle
from distcomm.hooks import Hook, HookRegistry, collective
from distcomm.object_collectives import ObjectCollectives
from distcomm.objects import OBJECT_SLOT_BYTES
from distcomm.opening import open_call
from distcomm.ops import ReduceOp, ReduceOpLike, parse_reduce_op
from distcomm.reduction_rules import PYTHON_PROTOTYPES, plan_reduction, reduce_alone
from distcomm.rules import fits_int64
from distcomm.serialization import ObjectCodec
from distcomm.signatures import op_name, signature_of, tensor_layout

T = TypeVar("T")
C = TypeVar("C", bound="Communicator")

__all__ = ["OBJECT_SLOT_BYTES", "Communicator", "Handle"]


def _describe_gather(data: Any, *, same_shape: bool = False, out: Any = None) -> str:
    """What must match across ranks in a gather: dtypes and dimensions, and shapes when promised equal."""
    return signature_of(data, shapes=same_shape) + (" same_shape" if same_shape else "")


class Communicator(ObjectCollectives, HookRegistry, abc.ABC):
    """One object to talk to the other ranks of a job, over a :class:`~distcomm.backend.Backend`.

    An abstract base class: most code gets one from
    :class:`~distcomm.TorchDistCommunicator`, :class:`~distcomm.LocalCommunicator` or
    :func:`~distcomm.setup`. What a subclass provides is its backend,
    :meth:`_open_backend`; everything else is defined here, once. A new transport is a
    :class:`~distcomm.backend.Backend` and a subclass that opens it::

        class MyCommunicator(Communicator):
            def _open_backend(self) -> Backend:
                return MyBackend()
    """

    rank: int
    """This process's rank in the communicator, from 0 to ``world_size - 1``."""
    world_size: int
    """How many ranks the communicator has."""
    local_rank: int
    """This process's rank among the processes on its machine."""

    def __init__(self) -> None:
        self._attach(self._open_backend())

    @abc.abstractmethod
    def _open_backend(self) -> Backend:
        """The backend this communicator runs on (called once, by ``__init__``)."""

    def _attach(self, backend: Backend) -> None:
        """Run on ``backend``, with fresh state, no hooks and the default flight recorder."""
        if not isinstance(backend, Backend):
            raise InvalidArgumentError(f"a Communicator runs on a distcomm Backend, got {describe(backend)}")
        self._backend = backend
        self._state = SharedState()
        self._channel = Channel(backend, self._state)
        self._hooks: tuple[Hook, ...] = ()
        self._device_types = self._channel.device_types  # the hot path reads it directly
        self._recorder: FlightRecorder | None = None
        self._record_group: Any = None
        self._record_into(default_recorder())
        # Plain attributes rather than properties: read on every hot-path call.
        self.rank, self.world_size, self.local_rank = backend.rank, backend.world_size, backend.local_rank

    # ------------------------------------------------------------------ identity

    @property
    def tensor_backend(self) -> Backend:
        """The backend whose tensor primitives this communicator runs on."""
        return self._backend

    @property
    def device(self) -> torch.device:
        """The device this communicator's collectives use for data that is not a tensor."""
        return self._backend.device

    @property
    def backend(self) -> str:
        """The backend's name: ``"gloo"``, ``"nccl"``, ``"mpi"`` or ``"local"``."""
        return self._backend.name

    @property
    def group(self) -> Any:
        """The torch.distributed process group it talks over (``None`` without one, or once closed)."""
        return self._backend.group

    @property
    def timeout(self) -> datetime.timedelta | None:
        """How long a collective may take before it fails, where the backend says (else ``None``)."""
        return self._backend.timeout

    @property
    def is_master(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    # ------------------------------------------------------------- object codec

    @property
    def object_codec(self) -> ObjectCodec:
        """How object collectives serialize: plain pickle, or a :class:`~distcomm.serialization.RestrictedCodec`."""
        return self._channel.object_codec

    @object_codec.setter
    def object_codec(self, codec: ObjectCodec) -> None:
        if not (callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))):
            raise InvalidArgumentError(f"an object codec needs encode() and decode(), got {codec!r}")
        self._state.codec = codec

    # --------------------------------------------------------------- life cycle

    @property
    def closed(self) -> bool:
        return self._state.closed

    def close(self) -> None:
        """Release the communicator (and its process group, when it owns one); calling it again is harmless."""
        if not self._state.closed:
            self._state.closed = True
            self._backend.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _check_rank(self, value: Any, name: str, operation: str) -> int:
        return check_rank(value, name, operation, self.world_size)

    # -------------------------------------------------------------- collectives

    @collective()
    def barrier(self) -> None:
        """Block until every rank has called ``barrier`` (a rank in another collective makes every rank raise)."""
        if self.world_size > 1:
            open_call(self._channel, "barrier", "")

    @collective(lambda data, src=0: f"{tensor_layout(data)} src={src}", lambda data, src=0: data)
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
        src = self._check_rank(src, "src", "broadcast")
        return cast(T, broadcasting.broadcast_data(self._channel, data, src))

    @overload
    def all_reduce(self, data: torch.Tensor, op: ReduceOpLike = "sum") -> torch.Tensor: ...
    @overload
    def all_reduce(self, data: T, op: ReduceOpLike = "sum") -> T: ...

    @collective(lambda data, op="sum": f"{signature_of(data)} op={op_name(op)}", lambda data, op="sum": data)
    def all_reduce(self, data: Any, op: ReduceOpLike = "sum") -> Any:
        """Reduce ``data`` over all ranks with ``op`` (sum, mean, min, max, product); return the result.

        A tensor is reduced in place and returned whenever the result has its dtype.
        The mean of an integer or bool tensor is exact and floating, which the tensor
        cannot hold: it returns a new floating tensor and leaves the input alone.
        Numbers, NumPy arrays and containers come back as new values of the same kind
        and structure (tensors inside containers follow the tensor rule).

        For anything but a lone tensor, ranks first agree on the layout (one small
        collective): dicts are matched by key, Python numbers of different kinds
        combine as Python would (an int and a float give a float), Python ints whose
        sum could leave int64 are summed exactly, and any other difference raises
        :class:`~distcomm.InconsistentInputError` on every rank.
        """
        if type(data) is torch.Tensor:  # the hot path: a tensor reduced in place, as it is
            try:
                wire_op = _IN_PLACE_OPS.get((data.dtype, op))
            except TypeError:  # an unhashable op: parse_reduce_op says what is wrong
                wire_op = None
            if wire_op is not None and data.is_contiguous() and self._device_types.get(data.device.type):
                self._backend.all_reduce(data, wire_op)
                return data
        return self._reduce(data, parse_reduce_op(op))

    def _reduce(self, data: Any, op: ReduceOp) -> Any:
        kind = type(data)
        if kind in PYTHON_PROTOTYPES and self.world_size == 1 and (kind is not int or fits_int64(data)):
            return reduce_alone(data, op)
        if isinstance(data, torch.Tensor):
            return reducing.reduce_tensor(self._channel, data, op)
        return reducing.reduce_structure(self._channel, data, op, "all_reduce")

    @collective(lambda mapping, op="sum": f"{signature_of(mapping)} op={op_name(op)}", lambda mapping, op="sum": mapping)
    def reduce_dict(self, mapping: Mapping[str, Any], op: ReduceOpLike = "sum") -> dict[str, Any]:
        """Reduce a (nested) dict of metrics in one collective per dtype; return a new dict.

        Unlike :meth:`all_reduce`, tensors in ``mapping`` are left untouched (metrics are
        often tensors still attached to the autograd graph): the result holds new,
        detached tensors. Keys are matched by name across ranks, as in :meth:`all_reduce`.
        """
        if not isinstance(mapping, Mapping):
            raise InvalidArgumentError(f"reduce_dict takes a dict of metrics, got {describe(mapping)}")
        reduce_op = parse_reduce_op(op)
        data = dict(mapping) if not isinstance(mapping, dict) else mapping
        return reducing.reduce_structure(self._channel, data, reduce_op, "reduce_dict", detach=True)  # type: ignore[no-any-return]

    @collective(_describe_gather, lambda data, **_: data)
    def all_gather(self, data: Any, *, same_shape: bool = False, out: torch.Tensor | None = None) -> list[Any]:
        """Return a list with every rank's ``data``, in rank order, on every rank.

        Tensors may differ in shape across ranks (not in dtype or number of
        dimensions); each entry is a new tensor on the input's device. Numbers,
        arrays and other values come back as lists of values of the same kind, and
        containers as one structure per rank.

        ``same_shape=True`` promises that every rank passes a tensor of the same shape
        and dtype: the shapes are not exchanged, and the data moves in one collective
        into one buffer (the entries are views of it). A broken promise is not detected
        here; :class:`~distcomm.CheckedCommunicator` (``DISTCOMM_DEBUG=1``) catches it.
        With it, ``out`` (a contiguous ``(world_size, *data.shape)`` tensor of ``data``'s
        dtype and device) is filled and reused instead of a new buffer, as with
        ``torch.distributed.all_gather_into_tensor``. Bad ``out`` or a non-tensor raises on
        the rank that passed it, before it communicates; the others then fail within the
        group's timeout.
        """
        if same_shape:
            return gathering.gather_same_shape(self._channel, data, "all_gather", out)
        if out is not None:
            raise InvalidArgumentError("all_gather: out is for same_shape=True, where every rank's shape is known")
        return gathering.gather_data(self._channel, data)

    # --------------------------------------------------------- sub-communicators

    @collective(lambda ranks: f"ranks={sorted(ranks) if isinstance(ranks, Sequence) else ranks!r}")
    def split(self, ranks: Sequence[int]) -> Communicator | None:
        """Make a communicator over ``ranks`` (this communicator's numbering); call it on every rank.

        Members get a communicator whose ranks are renumbered 0.. in the order of
        ``sorted(ranks)``, with this one's hooks and codec; the other ranks get
        ``None``. Every rank must pass the same ranks: ranks first agree on them, and
        a difference raises on every rank.
        """
        members: list[int] = []
        problem: InvalidArgumentError | None = None
        try:
            members = self._split_members(ranks)
        except InvalidArgumentError as error:
            problem = error
        if self.world_size > 1:
            agree(self._channel, "split", Claim((("ranks", repr(members)),), problem=str(problem) if problem else None))
        elif problem is not None:
            raise problem
        backend = self._backend.split(members)
        return None if backend is None else self._child(backend)

    def _split_members(self, ranks: Sequence[int]) -> list[int]:
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
            raise InvalidArgumentError(f"split takes a sequence of ranks, got {describe(ranks)}")
        members = sorted({self._check_rank(r, "a rank", "split") for r in ranks})
        if len(members) != len(ranks):
            raise InvalidArgumentError(f"split: ranks {list(ranks)} name a rank twice")
        if not members:
            raise InvalidArgumentError("split: give at least one rank")
        return members

    def _child(self, backend: Backend) -> Communicator:
        """A communicator of this one's class over ``backend``, with its codec and hooks."""
        child = type(self).__new__(type(self))
        child._attach(backend)
        child.object_codec = self.object_codec
        child._record_into(self._recorder)
        for hook in self._hooks:
            derived = hook.for_split(child)
            if derived is not None:
                child.register_hook(derived)
        return child

    # ---------------------------------------------------------- async variants

    @collective(lambda tensor, op="sum": f"{signature_of(tensor)} op={op_name(op)}", lambda tensor, op="sum": tensor)
    def all_reduce_async(self, tensor: torch.Tensor, op: ReduceOpLike = "sum") -> Handle:
        """Start an in-place reduction of ``tensor``; the handle's ``wait()`` returns it.

        Where the backend cannot reduce it in the background (a copy to another device,
        a dtype it must convert, a mean that needs a division), the work is done at
        once and ``handle.asynchronous`` is ``False``.
        """
        reduce_op = parse_reduce_op(op)
        if not isinstance(tensor, torch.Tensor) or not self._channel.accepts(tensor.device) or not tensor.is_contiguous():
            return CompletedHandle(self._reduce(tensor, reduce_op))
        plan = plan_reduction(tensor, tensor, reduce_op, "all_reduce_async")
        if plan.transport_dtype != tensor.dtype or plan.mean_dtype is not None:
            return CompletedHandle(reducing.reduce_tensor(self._channel, tensor, reduce_op))
        return self._backend.all_reduce_async(tensor, plan.op)

    @collective(lambda tensor, src=0: f"{signature_of(tensor)} src={src}", lambda tensor, src=0: tensor)
    def broadcast_async(self, tensor: torch.Tensor, src: int = 0) -> Handle:
        """Start an in-place broadcast of ``tensor`` from ``src``; ``wait()`` returns it.

        A tensor the backend cannot take where it is is broadcast at once, through a
        copy (``handle.asynchronous`` is ``False``).
        """
        src = self._check_rank(src, "src", "broadcast_async")
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(f"broadcast_async takes a tensor, got {describe(tensor)}")
        if not self._channel.accepts(tensor.device) or not tensor.is_contiguous():
            broadcasting.fill_from(self._channel, tensor, src)
            return CompletedHandle(tensor)
        return self._backend.broadcast_async(tensor, src)

    @collective(_describe_gather, lambda tensor, **_: tensor)
    def all_gather_async(self, tensor: torch.Tensor, *, same_shape: bool = False, out: torch.Tensor | None = None) -> Handle:
        """Start gathering ``tensor`` from every rank; ``wait()`` returns the list.

        Shapes may differ across ranks: they are exchanged first, synchronously (with
        the data itself for small tensors, which then makes the handle synchronous).
        Larger equal-shape data moves in the background. With ``same_shape=True`` (the
        promise of :meth:`all_gather`) nothing is exchanged first, and ``out`` may be given.
        """
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(f"all_gather_async takes a tensor, got {describe(tensor)}")
        if same_shape:
            return gathering.gather_same_shape_async(self._channel, tensor, out)
        if out is not None:
            raise InvalidArgumentError("all_gather_async: out is for same_shape=True, where every rank's shape is known")
        return gathering.gather_tensor(self._channel, tensor, asynchronous=True)


_IN_PLACE_OPS = reducing.IN_PLACE_OPS  # read on every hot-path call

