"""The :class:`Communicator`: what every rank can ask of the others, over any backend.

Every public method is given its meaning here, once, for every kind of input (tensors,
Python numbers, NumPy arrays, nested dicts/lists/tuples of those) and every
:class:`~distcomm.backends.backend.Backend`: it checks its arguments, passes through the hooks
(:mod:`distcomm.instrument.hooks`, by the :func:`~distcomm.instrument.hooks.collective`
declaration) and calls one function of :mod:`distcomm.wire`, which does the work. Because the
logic is shared, a :class:`~distcomm.LocalCommunicator` gives back exactly what a
:class:`~distcomm.TorchDistCommunicator` gives back, at any world size.

Results: a tensor is filled in place and returned whenever the result has the
tensor's dtype; the one exception, the mean of an integer or bool tensor, returns a
new floating tensor and leaves the input alone (an integer tensor cannot hold it).
Everything else (numbers, arrays, containers) comes back as a new value of the same
kind and structure.

An argument that one rank gets wrong alone (a root outside the group, an unknown op, a bad
``dim``) is sent in the call's opening instead of the call (:meth:`Communicator._refuse`), so
every rank raises it at once; the lone-tensor paths (``all_reduce(tensor)``, the async forms,
``all_gather(..., same_shape=True)``, ``reduce_scatter`` of a tensor that splits evenly) send
no opening, and there only :class:`~distcomm.CheckedCommunicator` sees such differences.

Tested by every collective's tests: tests/test_communicator.py, tests/test_exchange_collectives.py,
tests/wire/test_point_to_point.py, tests/test_invariance.py, tests/wire/test_layout_agreement.py, tests/wire/test_call_check.py.
"""

from __future__ import annotations

import abc
import datetime
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeVar, cast, overload

import torch

from distcomm.autograd import Differentiable
from distcomm.backends.backend import Backend
from distcomm.backends.handles import Handle
from distcomm.errors import InvalidArgumentError
from distcomm.instrument.fingerprints import signature_of, tensor_layout
from distcomm.instrument.flight_recorder import default_recorder
from distcomm.instrument.hooks import Call, Hook, HookChain, HookHandle, Recorder, collective, describe_filled
from distcomm.instrument.switches import environment_hooks
from distcomm.values.conversion import check_rank, describe
from distcomm.values.mesh import Mesh, coordinates, parse_mesh
from distcomm.values.ops import ReduceOp, ReduceOpLike, parse_reduce_op
from distcomm.values.timeouts import as_timeout
from distcomm.wire import all_to_all, broadcast, gather, point_to_point, reduce, reduce_scatter, rejoin, survivors
from distcomm.wire import objects as object_wire
from distcomm.wire.call_check import check, refuse
from distcomm.wire.codec import ObjectCodec
from distcomm.wire.context import SharedState, WireContext
from distcomm.wire.layout_agreement import Claim, agree

T = TypeVar("T")
V = TypeVar("V")
C = TypeVar("C", bound="Communicator")
DeviceLike = torch.device | str | None

DEFAULT_SETTLE_SECONDS = 1.0
"""How long survivors wait, beyond the timeout, for the last of them (its collective may have
timed out a timeout after another saw the dead rank's connection close)."""
FALLBACK_TIMEOUT = datetime.timedelta(minutes=5)
"""The bound on making the survivors' group where the communicator's own timeout is not known."""

__all__ = ["OBJECT_SLOT_BYTES", "Communicator", "Handle"]
OBJECT_SLOT_BYTES = object_wire.OBJECT_SLOT_BYTES


def _dims(call: Call) -> str:
    return f"dims={call.data!r}"


def _broadcast_layout(call: Call) -> str:
    """What must match across ranks in a broadcast: the tensors it fills (the rest is src's alone)."""
    return tensor_layout(call.data)


def _ranks(call: Call) -> str:
    ranks = call.data
    return f"ranks={sorted(ranks) if isinstance(ranks, Sequence) else ranks!r}"


def _any_shapes(call: Call) -> str:
    """What must match across ranks when shapes may differ per rank: dtypes and dimensions."""
    return signature_of(call.data, shapes=False)


def _gather_layout(call: Call) -> str:
    """What must match across ranks in a gather: dtypes and dimensions, and shapes when promised equal."""
    return signature_of(call.data, shapes=bool(call.argument("same_shape")))


class Communicator(abc.ABC):
    """One object to talk to the other ranks of a job, over a :class:`~distcomm.backends.backend.Backend`.

    An abstract base class: most code gets one from
    :class:`~distcomm.TorchDistCommunicator`, :class:`~distcomm.LocalCommunicator` or
    :func:`~distcomm.setup`. What a subclass provides is its backend,
    :meth:`_open_backend`; everything else is defined here, once. A new transport is a
    :class:`~distcomm.backends.backend.Backend` and a subclass that opens it::

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
    group_name: str
    _backend: Backend
    _state: SharedState
    _context: WireContext
    _hook_chain: HookChain
    _viewed: Communicator | None

    def __init__(self) -> None:
        self._attach(self._open_backend())

    @abc.abstractmethod
    def _open_backend(self) -> Backend:
        """The backend this communicator runs on (called once, by ``__init__``)."""

    def _attach(self, backend: Backend, *, hooks: tuple[Hook, ...] | None = None, viewed: Communicator | None = None) -> None:
        """Run on ``backend`` with ``hooks`` (by default, the process's flight recorder): the one place
        a communicator gets its state. A view (``viewed``: the communicator it is a view of) shares
        that one's state, context and identity, and runs its hooks too, also those added later."""
        if not isinstance(backend, Backend):
            raise InvalidArgumentError(f"a Communicator runs on a distcomm Backend, got {describe(backend)}")
        self._backend = backend
        self._viewed = viewed
        if viewed is None:
            self._state = SharedState()
            self._context = WireContext(backend, self._state)
            self.group_name = str(getattr(backend.group, "group_name", "") or backend.name)
            """The name of the group it talks over, the same on every rank (what the flight recorder keys on)."""
        else:
            self._state, self._context, self.group_name = viewed._state, viewed._context, viewed.group_name
        # Whether the backend takes CPU and CUDA tensors as they are: the hot path reads these rather
        # than build a tensor's device object (about 0.3 us a call).
        self._takes_cpu, self._takes_cuda = self._context.accepts(torch.device("cpu")), self._context.accepts(torch.device("cuda"))
        # Plain attributes rather than properties: read on every hot-path call.
        self.rank, self.world_size, self.local_rank = backend.rank, backend.world_size, backend.local_rank
        if hooks is None and viewed is None:  # the process's recorder, and what the environment switches on
            recorder = default_recorder()
            hooks = ((recorder,) if recorder is not None else ()) + environment_hooks(self)
        self._hook_chain = HookChain(hooks or (), None if viewed is None else viewed._hook_chain)

    def with_hooks(self, *hooks: Hook) -> Communicator:
        """This communicator with ``hooks`` added, as a view: same backend, state and ranks; the
        hooks of this one (also those registered later) run too. Splits of the view carry its
        hooks on (see :meth:`Hook.for_split`); closing it closes this one."""
        root = self
        while root._viewed is not None:
            root = root._viewed
        view = type(root).__new__(type(root))
        view._attach(self._backend, hooks=hooks, viewed=self)
        return view

    # ------------------------------------------------------------------ identity

    @property
    def inner(self) -> Communicator | None:
        """The communicator this one is a view of (:meth:`with_hooks`, :class:`~distcomm.CheckedCommunicator`), else ``None``."""
        return self._viewed

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
    def autograd(self) -> Differentiable:
        """The differentiable collectives over this communicator (see :mod:`distcomm.autograd`)."""
        return Differentiable(self)

    @property
    def is_master(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    # ------------------------------------------------------------- object codec

    @property
    def object_codec(self) -> ObjectCodec:
        """How object collectives serialize: plain pickle, or a :class:`~distcomm.wire.codec.RestrictedCodec`."""
        return self._context.object_codec

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

    # -------------------------------------------------------------------- hooks

    @property
    def hooks(self) -> tuple[Hook, ...]:
        """The hooks every collective of this communicator passes through, in the order they run."""
        return self._hook_chain.hooks

    def register_hook(self, hook: Hook) -> HookHandle:
        """Pass every collective through ``hook`` from now on; the handle's ``remove()`` stops it.

        A :class:`~distcomm.instrument.hooks.Recorder` (such as :class:`~distcomm.FlightRecorder`)
        takes the place of the one recording now.
        """
        self._hook_chain.add(hook)
        return HookHandle(self._hook_chain, hook)

    def remove_hook(self, hook: Hook) -> None:
        """Stop passing collectives through ``hook`` (harmless when it is not attached here)."""
        self._hook_chain.remove(hook)

    @property
    def flight_recorder(self) -> Recorder | None:
        """The recorder of this communicator's calls (``None`` with ``DISTCOMM_FLIGHT_RECORDER=0``)."""
        return self._hook_chain.recorder

    def dump_flight_record(self, reason: str = "requested") -> Path | None:
        """Write this rank's flight record now (see :mod:`distcomm.instrument.flight_recorder`); its
        path, or ``None`` when nothing records or it could not be written. Never raises."""
        recorder = self._hook_chain.recorder
        return None if recorder is None else recorder.dump(reason)

    # -------------------------------------------------------------- collectives

    @collective(None)
    def barrier(self) -> None:
        """Block until every rank has called ``barrier`` (a rank in another collective makes every rank raise)."""
        check(self._context, "barrier")

    @collective(_broadcast_layout)
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
        src = self._root(src, "src", "broadcast")
        return cast(T, broadcast.broadcast_data(self._context, data, src))

    @overload
    def all_reduce(self, /, data: torch.Tensor, op: ReduceOpLike = "sum") -> torch.Tensor: ...
    @overload
    def all_reduce(self, /, data: T, op: ReduceOpLike = "sum") -> T: ...

    @collective(describe_filled)
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
            # No conjugate bit to test: the table holds no complex dtype.
            if wire_op is not None and data.is_contiguous() and not data.is_neg() and (
                self._takes_cpu if data.is_cpu else self._takes_cuda if data.is_cuda else self._context.accepts(data.device)
            ):
                self._backend.all_reduce(data, wire_op)
                return data
        return reduce.reduce_data(self._context, data, parse_reduce_op(op))  # raised here: the lone path has no opening

    @collective()
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
        return reduce.reduce_structure(self._context, data, reduce_op, "reduce_dict", detach=True)  # type: ignore[no-any-return]

    @collective(_gather_layout, local=("out",))
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
            return gather.gather_same_shape(self._context, data, "all_gather", out)
        if out is not None:
            raise InvalidArgumentError("all_gather: out is for same_shape=True, where every rank's shape is known")
        return gather.gather_data(self._context, data, "all_gather")


    # ------------------------------------------------- rooted and chunked collectives

    @collective()
    def reduce(self, data: Any, dst: int = 0, op: ReduceOpLike = "sum") -> Any:
        """The reduction of every rank's ``data`` (as :meth:`all_reduce`) on ``dst``; ``None`` on the others.

        On ``dst`` a tensor is filled in place (the integer mean excepted, as in
        ``all_reduce``); the other ranks' data is left as it was. Ranks first agree on the
        layout, ``dst`` and ``op`` (one small collective, which carries small data), so a
        difference, or a bad argument on any rank, raises on every rank.
        """
        dst = self._root(dst, "dst", "reduce")
        return reduce.reduce_to(self._context, data, dst, self._op(op, "reduce"))

    @collective(_any_shapes)
    def gather(self, data: Any, dst: int = 0) -> list[Any] | None:
        """A list of every rank's ``data``, in rank order, on ``dst``; ``None`` on the others.
        Shapes may differ per rank and are never given (as :meth:`all_gather`)."""
        dst = self._root(dst, "dst", "gather")
        gathered = gather.gather_data(self._context, data, f"gather to {dst}")
        return gathered if self.rank == dst else None

    @collective(None)
    def scatter(self, chunks: Sequence[Any] | None, src: int = 0) -> Any:
        """This rank's entry of ``src``'s ``chunks`` (one per rank; read on ``src`` only, the others
        may pass ``None``). Tensor chunks may differ in shape and arrive as new tensors; other
        chunks arrive pickled, as :meth:`scatter_object` gives them."""
        return all_to_all.scatter(self._context, chunks, self._root(src, "src", "scatter"))

    @collective(_any_shapes)
    def all_to_all(self, chunks: Sequence[Any]) -> list[Any]:
        """Send ``chunks[i]`` to rank ``i``; return what every rank sent this one, in rank order.

        Tensor chunks may differ in shape per rank pair (every chunk of a call has one dtype,
        the same on every rank): the sizes are exchanged in one small step, then the data
        moves in one all-to-all. Other chunks travel pickled.
        """
        return all_to_all.all_to_all(self._context, chunks)

    @collective()
    def reduce_scatter(self, chunks: Any, op: ReduceOpLike = "sum", *, dim: int = 0) -> Any:
        """Reduce entry ``i`` of every rank's ``chunks`` over all ranks onto rank ``i``; return this
        rank's, as a new value (the inputs are left alone).

        ``chunks`` is a list of one entry per rank; entry shapes may differ between entries
        but must agree across ranks. A single tensor is split along ``dim`` into one part per
        rank (uneven, the first parts larger, when the size does not divide). Tensors are
        reduced with the rules of :meth:`all_reduce` (an integer mean is floating), in rank
        order, so every rank computes the same bits; other entries reduce as ``all_reduce``
        reduces them. Ranks first agree on the entries' layout and ``op``, and a difference or
        a bad argument on any rank raises on every rank; except on the lone-tensor path: a
        tensor whose first dimension splits evenly, reduced in its own dtype, goes to the backend
        as it is, like ``all_reduce(tensor)``, and a difference there (another op, shape, dtype or
        ``dim``) is caught by :class:`~distcomm.CheckedCommunicator` only.
        """
        return self._start_reduce_scatter(chunks, op, dim, asynchronous=False).wait()

    # ------------------------------------------------------------------- async

    @collective(describe_filled)
    def all_reduce_async(self, tensor: torch.Tensor, op: ReduceOpLike = "sum") -> Handle:
        """Start an in-place reduction of ``tensor``; the handle's ``wait()`` returns it.

        Where the backend cannot reduce it in the background (a copy to another device,
        a dtype it must convert, a mean that needs a division), the work is done at
        once and ``handle.asynchronous`` is ``False``.
        """
        return reduce.start_all_reduce(self._context, tensor, parse_reduce_op(op))

    @collective(describe_filled)
    def broadcast_async(self, tensor: torch.Tensor, src: int = 0) -> Handle:
        """Start an in-place broadcast of ``tensor`` from ``src``; ``wait()`` returns it.

        A tensor the backend cannot take where it is is broadcast at once, through a
        copy (``handle.asynchronous`` is ``False``).
        """
        src = check_rank(src, "src", "broadcast_async", self.world_size)
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(f"broadcast_async takes a tensor, got {describe(tensor)}")
        return broadcast.start_broadcast(self._context, tensor, src)

    @collective(_gather_layout, local=("out",))
    def all_gather_async(self, tensor: torch.Tensor, *, same_shape: bool = False, out: torch.Tensor | None = None) -> Handle:
        """Start gathering ``tensor`` from every rank; ``wait()`` returns the list.

        Shapes may differ across ranks: they are exchanged first, synchronously (with
        the data itself for small tensors, which then makes the handle synchronous).
        Larger equal-shape data moves in the background. With ``same_shape=True`` (the
        promise of :meth:`all_gather`) nothing is exchanged first, and ``out`` may be given.
        """
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(f"all_gather_async takes a tensor, got {describe(tensor)}")
        return gather.start_gather(self._context, tensor, same_shape, out)

    @collective(_any_shapes)
    def all_to_all_async(self, chunks: Sequence[torch.Tensor]) -> Handle:
        """Start :meth:`all_to_all` of tensor chunks; the handle's ``wait()`` returns the list.

        The sizes are exchanged first, at once (with the data itself when it is small, which
        then makes the handle synchronous); the data moves in the background.
        """
        return all_to_all.start_all_to_all(self._context, chunks)

    @collective()
    def reduce_scatter_async(self, chunks: Any, op: ReduceOpLike = "sum", *, dim: int = 0) -> Handle:
        """Start :meth:`reduce_scatter`; the handle's ``wait()`` returns this rank's entry.

        A single tensor whose first dimension splits evenly, reduced in its own dtype, is
        reduced in the background; anything else is done at once
        (``handle.asynchronous`` is ``False``).
        """
        return self._start_reduce_scatter(chunks, op, dim, asynchronous=True)

    def _start_reduce_scatter(self, chunks: Any, op: ReduceOpLike, dim: int, *, asynchronous: bool) -> Handle:
        reduce_op = self._op(op, "reduce_scatter")
        if isinstance(chunks, torch.Tensor):
            self._parsed("reduce_scatter", lambda: reduce_scatter.check_split(chunks, dim, "reduce_scatter"))
        return reduce_scatter.start_reduce_scatter(self._context, chunks, reduce_op, dim, asynchronous=asynchronous)

    # ------------------------------------------------------------------ objects

    @collective(None, local=("device",))
    def all_gather_object(self, obj: T, *, device: DeviceLike = None) -> list[T]:
        """Every rank's picklable ``obj``, in rank order, on every rank.

        Small payloads (under about 4 KB) take one collective; larger ones two. An
        object that cannot be pickled on one rank raises on every rank.
        """
        return object_wire.all_gather_objects(self._context, obj, "all_gather_object", device)

    @collective(None, local=("device",))
    def gather_object(self, obj: T, dst: int = 0, *, device: DeviceLike = None) -> list[T] | None:
        """Every rank's picklable ``obj`` as a list on rank ``dst``; ``None`` on the others."""
        return object_wire.gather_object(self._context, obj, self._root(dst, "dst", "gather_object"), device)

    @collective(None, local=("device",))
    def broadcast_object(self, obj: T, src: int = 0, *, device: DeviceLike = None) -> T:
        """Return ``src``'s picklable ``obj`` on every rank (``src`` gets its own object back).

        An object that cannot be pickled on ``src`` raises on every rank.
        """
        src = self._root(src, "src", "broadcast_object")
        return cast(T, object_wire.broadcast_object(self._context, obj, src, "broadcast_object", device))

    @collective(None, local=("device",))
    def broadcast_object_list(self, object_list: list[Any], src: int = 0, *, device: DeviceLike = None) -> None:
        """Replace, in place, the items of ``object_list`` on every rank by ``src``'s items.

        Every rank must pass a list; a rank that does not makes every rank raise.
        """
        src = self._root(src, "src", "broadcast_object_list")
        if not isinstance(object_list, list):
            self._refuse("broadcast_object_list", InvalidArgumentError(
                f"broadcast_object_list needs a list to fill in place, got {describe(object_list)}"
            ))  # fmt: skip
        object_wire.broadcast_object_list(self._context, object_list, src, device)

    @collective(None)
    def scatter_object(self, objects: Sequence[T] | None, src: int = 0) -> T:
        """Give rank ``i`` the item ``objects[i]`` of ``src``'s sequence (others pass ``None``).

        A ``src`` sequence of the wrong length fails on every rank, not only on ``src``.
        """
        return cast(T, object_wire.scatter_object(self._context, objects, self._root(src, "src", "scatter_object")))

    def all_gather_objects(self, obj: T, *, device: DeviceLike = None) -> list[T]:
        """Deprecated name of :meth:`all_gather_object` (kept for one release)."""
        _deprecated("all_gather_objects", "all_gather_object")
        return self.all_gather_object(obj, device=device)

    def gather_objects(self, obj: T, dst: int = 0, *, device: DeviceLike = None) -> list[T] | None:
        """Deprecated name of :meth:`gather_object` (kept for one release)."""
        _deprecated("gather_objects", "gather_object")
        return self.gather_object(obj, dst, device=device)

    def scatter_objects(self, objects: Sequence[T] | None, src: int = 0) -> T:
        """Deprecated name of :meth:`scatter_object` (kept for one release)."""
        _deprecated("scatter_objects", "scatter_object")
        return self.scatter_object(objects, src)

    # ------------------------------------------------------------ point to point

    @collective(every_rank=False)
    def send(self, data: Any, dst: int) -> None:
        """Send ``data`` (a tensor, or any picklable value) to rank ``dst``, which calls :meth:`recv`.
        Data that cannot be sent (an unsupported dtype, an object that cannot be pickled) is
        refused to the receiver too, which raises the same reason."""
        point_to_point.start_send(self._context, data, self._peer(dst, "dst", "send"), "send").wait()

    @collective(None, every_rank=False)
    def recv(self, src: int) -> Any:
        """What rank ``src`` sent with :meth:`send`: a new tensor on :attr:`device`, or the value."""
        return point_to_point.Receive(self._context, self._peer(src, "src", "recv")).wait()

    @collective(every_rank=False)
    def isend(self, data: Any, dst: int) -> Handle:
        """Start sending ``data`` to ``dst``; the handle's ``wait()`` returns ``None`` once it left."""
        return point_to_point.start_send(self._context, data, self._peer(dst, "dst", "isend"), "isend")

    @collective(None, every_rank=False)
    def irecv(self, src: int) -> Handle:
        """Start receiving from ``src``; the handle's ``wait()`` returns what arrived. The header is
        received in the background; the payload, whose size it gives, when you wait. Several
        receives from one rank may be in flight, waited on in any order: each gets the next
        message from that rank, in the order the receives were started."""
        return point_to_point.Receive(self._context, self._peer(src, "src", "irecv"))

    @collective(None, every_rank=False)
    def batch_send_recv(self, sends: Mapping[int, Any], recv_from: Sequence[int] = ()) -> dict[int, Any]:
        """Send ``sends[dst]`` to each ``dst`` and receive from each rank of ``recv_from``, all at
        once (a ring step, a halo exchange: no order to get wrong); returns what arrived, by
        source. Each peer calls it (or :meth:`send`/:meth:`recv`) with its side."""
        if not isinstance(sends, Mapping):
            raise InvalidArgumentError("batch_send_recv takes sends as a dict {dst: data}")
        targets = {self._peer(dst, "a destination", "batch_send_recv"): data for dst, data in sends.items()}
        sources = [self._peer(src, "a source", "batch_send_recv") for src in recv_from]
        if len(set(sources)) != len(sources):
            raise InvalidArgumentError(f"batch_send_recv: recv_from names a rank twice: {list(recv_from)}")
        return point_to_point.batch_send_recv(self._context, targets, sources)

    # --------------------------------------------------------- sub-communicators

    @collective(_ranks)
    def split(self, ranks: Sequence[int], *, timeout: datetime.timedelta | float | None = None) -> Communicator | None:
        """Make a communicator over ``ranks`` (this communicator's numbering); call it on every rank.

        Members get a communicator whose ranks are renumbered 0.. in the order of
        ``sorted(ranks)``, with this one's hooks, codec and timeout (or ``timeout``, seconds
        or a timedelta); the other ranks get ``None``. Every rank must pass the same ranks
        and timeout: ranks first agree on them, and a difference raises on every rank.
        """
        nothing: tuple[list[int], datetime.timedelta | None] = ([], None)
        members, limit = self._agreed("split", "ranks", lambda: (self._split_members(ranks), _timeout(timeout)), nothing)
        backend = self._backend.split(members, limit)
        return None if backend is None else self._child(backend)

    @collective(_dims)
    def mesh(self, dims: Mapping[str, int] | Sequence[int], names: Sequence[str] | None = None) -> Mesh[Communicator]:
        """This communicator's ranks as a grid with named dimensions (``{"dp": 2, "gp": -1}``, or a
        shape and names), row-major as ``torch.arange(world_size).reshape(shape)``; one size may
        be ``-1``, the rest. Call it on every rank: ranks first agree on the dimensions.
        ``mesh["gp"]`` is this rank's communicator along ``gp``, with this one's hooks and codec;
        see :mod:`distcomm.values.mesh`.
        """
        empty: tuple[tuple[str, ...], tuple[int, ...]] = ((), ())
        axis_names, shape = self._agreed("mesh", "dims", lambda: parse_mesh(dims, names, self.world_size), empty)
        device_mesh, backends = self._backend.mesh(shape, axis_names)
        children = tuple(self._child(backend) for backend in backends)
        return Mesh(axis_names, shape, coordinates(self.rank, shape), children, device_mesh)

    def _agreed(self, operation: str, key: str, read: Callable[[], V], nothing: V) -> V:
        """``read()`` (this rank's reading of its arguments), once every rank agrees on it: a bad
        argument on any rank, or a difference between ranks, raises on every rank."""
        value, problem = nothing, None
        try:
            value = read()
        except InvalidArgumentError as error:
            problem = error
        if self.world_size > 1:
            agree(self._context, operation, Claim(((key, repr(value)),), problem=str(problem) if problem else None))
        elif problem is not None:
            raise problem
        return value

    def _split_members(self, ranks: Sequence[int]) -> list[int]:
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
            raise InvalidArgumentError(f"split takes a sequence of ranks, got {describe(ranks)}")
        members = sorted({check_rank(r, "a rank", "split", self.world_size) for r in ranks})
        if len(members) != len(ranks):
            raise InvalidArgumentError(f"split: ranks {list(ranks)} name a rank twice")
        if not members:
            raise InvalidArgumentError("split: give at least one rank")
        return members

    def _child(self, backend: Backend) -> Communicator:
        """A communicator of this one's class over ``backend`` (split from this one's), its hooks
        carried on by one rule (:meth:`HookChain.for_split`); a view's child is a view of its
        parent's child."""
        child = type(self).__new__(type(self))
        if self._viewed is None:
            child._attach(backend, hooks=())
            child.object_codec = self.object_codec
        else:
            base = self._viewed._child(backend)
            child._attach(base._backend, hooks=(), viewed=base)
        for hook in self._hook_chain.for_split(child):
            child.register_hook(hook)
        return child

    @collective(None, every_rank=False)
    def shrink(self, settle: float = DEFAULT_SETTLE_SECONDS) -> Communicator:
        """A communicator over the ranks that call ``shrink`` (after a
        :class:`~distcomm.CollectiveError`, or any time), renumbered 0.. in the old order.

        The survivors agree on who they are through the job's key-value store, never through the
        broken group (:mod:`distcomm.wire.survivors`). Ranks that have not arrived by the group's
        timeout plus ``settle`` seconds after the first survivor did are left out (all arriving
        ends the wait at once). A rank killed outright closes its connections, so the first
        survivor arrives at once and the new communicator is ready about a timeout plus
        ``settle`` after the death. Every survivor gets the same membership: a rank left out gets
        :class:`~distcomm.errors.ExcludedRankError`. This communicator is closed afterwards.
        """
        if isinstance(settle, bool) or not isinstance(settle, (int, float)) or not settle > 0:
            raise InvalidArgumentError(f"shrink: settle is a positive number of seconds, got {settle!r}")
        timeout = as_timeout(self.timeout or FALLBACK_TIMEOUT)
        child = self._child(survivors.form_survivors(self._context, self.group_name, timeout, float(settle)))
        self._state.closed = True  # the broken group is never used again; its resources stay with it
        return child

    @collective(None)
    def admit(self, settle: float = DEFAULT_SETTLE_SECONDS) -> Communicator:
        """This communicator, or, when replacement processes asked to join the job, a new one over
        the ranks here and them, in seat order (the rank each was launched as); this one is closed then.

        Only workers of ``python -m distcomm run`` are ever joined (elsewhere this returns at once,
        with no collective). There, every rank calls it at the same point (:class:`~distcomm.Resilient`
        does at each step): rank 0 reads how many newcomers asked and every rank takes that number
        (one small all-reduce); when there are new ones, all form the grown world through the job's store
        (:mod:`distcomm.wire.rejoin`). The new communicator's :attr:`growth` names the newcomers and
        the rank whose training state they should take.
        """
        if isinstance(settle, bool) or not isinstance(settle, (int, float)) or not settle > 0:
            raise InvalidArgumentError(f"admit: settle is a positive number of seconds, got {settle!r}")
        job = rejoin.job_store()
        if job is None:
            return self
        asked = self.all_reduce(job.pending() if self.rank == 0 else 0, op="max")  # one store read a step, not one a rank
        if asked <= job.admitted:
            return self
        timeout = as_timeout(self.timeout or FALLBACK_TIMEOUT)
        seats = self.all_gather(job.seat)
        admission = job.admit(seats, asked, timeout.total_seconds())
        old = self._backend

        def make(store: Any, rank: int, world_size: int) -> Backend:
            return old.new_world(store, rank, world_size, timeout)

        try:
            backend, growth = rejoin.form_world(job, admission, make, timeout, float(settle))
        finally:
            self._state.closed = True  # the old world is gone on every member (also when no new one formed)
        child = self._child(backend)
        child.growth, child.group_name = growth, rejoin.world_name(child.group_name, admission.number)
        return child

    growth: rejoin.Growth | None = None
    """Set on a communicator formed when newcomers joined (:meth:`admit`, or a replacement's
    ``TorchDistCommunicator.init()``): who is new, and whose training state they take."""

    def _leave(self, reason: str) -> bool:
        """Say in the job's store that this rank is alive but leaves with ``reason`` (its own step
        raised), so that ranks which shrink meanwhile stop instead of dropping it; whether it was said."""
        return survivors.leave_job(self._context, self.group_name, reason)

    def _stay(self) -> None:
        """Take back :meth:`_leave`: this rank went on after all."""
        survivors.stay_in_job(self._context, self.group_name)

    # ------------------------------------------------------ arguments every rank sees

    def _refuse(self, operation: str, error: InvalidArgumentError) -> NoReturn:
        """Raise ``error`` (this rank's own bad argument) on every rank: this rank takes part in the
        call's opening with it instead of the call (see :func:`distcomm.wire.call_check.refuse`).
        Only for calls whose every form starts with an opening."""
        refuse(self._context, operation, str(error))

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

    def _peer(self, value: Any, name: str, operation: str) -> int:
        """``value`` as the other rank of a message (never this one)."""
        peer = check_rank(value, name, operation, self.world_size)
        if peer == self.rank:
            raise InvalidArgumentError(f"{operation}: {name}={peer} is this rank; a message needs another rank")
        return peer


_IN_PLACE_OPS = reduce.IN_PLACE_OPS  # read on every hot-path call


def _timeout(value: datetime.timedelta | float | None) -> datetime.timedelta | None:
    return None if value is None else as_timeout(value)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"Communicator.{old} is deprecated: call {new} (same arguments)", DeprecationWarning, stacklevel=3)
