"""The :class:`Communicator`: what every rank can ask of the others, over any backend.

Every public method is given its meaning here, once, for every kind of input (tensors,
Python numbers, NumPy arrays, nested dicts/lists/tuples of those) and every
:class:`~distcomm.backends.backend.Backend`. The work itself lives in modules named for it
(:mod:`~distcomm.wire.reduce`, :mod:`~distcomm.wire.broadcast`, :mod:`~distcomm.wire.gather`,
:mod:`~distcomm.wire.objects`); this class checks arguments, passes each call through the
hooks (:mod:`distcomm.instrument.hooks`) and hands it on. Because the logic is shared, a
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
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast, overload

import torch

from distcomm.async_collectives import AsyncCollectives, gather_layout
from distcomm.autograd import Differentiable
from distcomm.backends.backend import Backend
from distcomm.backends.handles import Handle
from distcomm.errors import InvalidArgumentError
from distcomm.exchange_collectives import ExchangeCollectives
from distcomm.instrument.fingerprints import tensor_layout
from distcomm.instrument.flight_recorder import default_recorder
from distcomm.instrument.hooks import Call, Hook, collective, describe_filled
from distcomm.object_collectives import ObjectCollectives
from distcomm.point_to_point import PointToPoint
from distcomm.shrinking import Shrinking
from distcomm.values.conversion import describe
from distcomm.values.mesh import Mesh, coordinates, parse_mesh
from distcomm.values.ops import ReduceOpLike, parse_reduce_op
from distcomm.values.timeouts import as_timeout
from distcomm.wire import broadcast as broadcasting
from distcomm.wire import gather as gathering
from distcomm.wire import reduce as reducing
from distcomm.wire.call_check import open_call
from distcomm.wire.codec import ObjectCodec
from distcomm.wire.context import Channel, SharedState
from distcomm.wire.layout_agreement import Claim, agree
from distcomm.wire.objects import OBJECT_SLOT_BYTES

T = TypeVar("T")
V = TypeVar("V")
C = TypeVar("C", bound="Communicator")

__all__ = ["OBJECT_SLOT_BYTES", "Communicator", "Handle"]


def _dims(call: Call) -> str:
    return f"dims={call.data!r}"


def _broadcast_layout(call: Call) -> str:
    """What must match across ranks in a broadcast: the tensors it fills (the rest is src's alone)."""
    return tensor_layout(call.data)


def _ranks(call: Call) -> str:
    ranks = call.data
    return f"ranks={sorted(ranks) if isinstance(ranks, Sequence) else ranks!r}"


class Communicator(ObjectCollectives, AsyncCollectives, ExchangeCollectives, PointToPoint, Shrinking, abc.ABC):
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

    def __init__(self) -> None:
        self._attach(self._open_backend())

    @abc.abstractmethod
    def _open_backend(self) -> Backend:
        """The backend this communicator runs on (called once, by ``__init__``)."""

    def _attach(self, backend: Backend, hooks: tuple[Hook, ...] | None = None) -> None:
        """Run on ``backend``, with fresh state and ``hooks`` (by default, the process's flight recorder)."""
        if not isinstance(backend, Backend):
            raise InvalidArgumentError(f"a Communicator runs on a distcomm Backend, got {describe(backend)}")
        self._backend = backend
        self._state = SharedState()
        self._channel = Channel(backend, self._state)
        self._device_types = self._channel.device_types  # the hot path reads it directly
        # Plain attributes rather than properties: read on every hot-path call.
        self.rank, self.world_size, self.local_rank = backend.rank, backend.world_size, backend.local_rank
        self.group_name = str(getattr(backend.group, "group_name", "") or backend.name)
        """The name of the group it talks over, the same on every rank (what the flight recorder keys on)."""
        if hooks is None:
            recorder = default_recorder()
            hooks = () if recorder is None else (recorder,)
        self._init_hooks(hooks)

    def with_hooks(self, *hooks: Hook) -> Communicator:
        """This communicator with ``hooks`` added, as a view: same backend, state and ranks; the
        hooks of this one (also those registered later) run too. Splits of the view carry its
        hooks on (see :meth:`Hook.for_split`); closing it closes this one."""
        return CommunicatorView(self, *hooks)

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

    # -------------------------------------------------------------- collectives

    @collective(None)
    def barrier(self) -> None:
        """Block until every rank has called ``barrier`` (a rank in another collective makes every rank raise)."""
        if self.world_size > 1:
            open_call(self._channel, "barrier", "")

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
        return cast(T, broadcasting.broadcast_data(self._channel, data, src))

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
            if wire_op is not None and data.is_contiguous() and not data.is_neg() and not data.is_conj() and self._device_types.get(data.device.type):
                self._backend.all_reduce(data, wire_op)
                return data
        return self._reduce(data, parse_reduce_op(op))

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
        return reducing.reduce_structure(self._channel, data, reduce_op, "reduce_dict", detach=True)  # type: ignore[no-any-return]

    @collective(gather_layout, local=("out",))
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
        return gathering.gather_data(self._channel, data, "all_gather")

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
            agree(self._channel, operation, Claim(((key, repr(value)),), problem=str(problem) if problem else None))
        elif problem is not None:
            raise problem
        return value

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
        """A communicator of this one's class over ``backend``: its hooks carried on, one rule for all."""
        child = self._new_child(backend)
        for hook in self._split_hooks(child):
            child.register_hook(hook)
        return child

    def _new_child(self, backend: Backend) -> Communicator:
        child = type(self).__new__(type(self))
        child._attach(backend, hooks=())
        child.object_codec = self.object_codec
        return child


_IN_PLACE_OPS = reducing.IN_PLACE_OPS  # read on every hot-path call


def _timeout(value: datetime.timedelta | float | None) -> datetime.timedelta | None:
    return None if value is None else as_timeout(value)



class CommunicatorView(Communicator):
    """``inner`` with more hooks, as a communicator of its own: same backend, state and ranks.

    Made by :meth:`Communicator.with_hooks`, and the base of
    :class:`~distcomm.CheckedCommunicator` and :class:`~distcomm.ProfiledCommunicator`.
    ``inner``'s hooks run too, also those registered on it later; ``inner`` itself stays as
    it was. Closing the view closes ``inner``.
    """

    def __init__(self, inner: Communicator, *hooks: Hook) -> None:
        if not isinstance(inner, Communicator):
            raise TypeError(f"{type(self).__name__} wraps a Communicator, got {type(inner).__name__}")
        self.inner = inner
        self._backend, self._state, self._channel = inner._backend, inner._state, inner._channel
        self._device_types = inner._device_types
        self.rank, self.world_size, self.local_rank = inner.rank, inner.world_size, inner.local_rank
        self.group_name = inner.group_name
        self._init_hooks(hooks, parent=inner)

    def _open_backend(self) -> Backend:
        return self.inner.tensor_backend

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def _new_child(self, backend: Backend) -> Communicator:
        child = type(self).__new__(type(self))
        CommunicatorView.__init__(child, self.inner._child(backend))
        return child
