"""Hooks: how checking, profiling and recording see every collective of a communicator.

Every public collective of :class:`~distcomm.Communicator` is declared with the
:func:`collective` decorator, so it passes through the communicator's hooks by
construction: a method added later cannot forget them. A hook's :meth:`Hook.before`
runs before the call and :meth:`Hook.after` after it (also when it failed), in order
of :attr:`Hook.order`: the flight recorder first (it sees every call start and end),
checks next, timers closest to the call, so a profile does not include a checker's
round trips. With no hook attached a call pays one attribute test.

Attach a hook with :meth:`~distcomm.Communicator.register_hook` (the returned :class:`HookHandle`
removes it), or make a view that adds hooks with ``comm.with_hooks(...)``. A view shares
the hooks of the communicator it was made from, live: one registered there later is
seen through the view too.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, ParamSpec, Protocol, TypeVar

from distcomm.errors import ClosedCommunicatorError, CollectiveError, InvalidArgumentError, renamed
from distcomm.instrument.fingerprints import filled_signature, op_name, payload_bytes, signature_of

if TYPE_CHECKING:
    from pathlib import Path
    from types import FrameType

    from distcomm.wire.context import SharedState

P = ParamSpec("P")
R = TypeVar("R")
Self = TypeVar("Self", bound="Instrumented")

_getframe = sys._getframe


class Instrumented(Protocol):
    """What :func:`collective` needs of the object whose methods it declares (a communicator)."""

    rank: int
    _state: SharedState
    _hook_chain: HookChain


class CollectiveSpec:
    """What the hooks know of a collective from its declaration: its name and parameters,
    and how to describe a call of it (see :attr:`Call.details`)."""

    __slots__ = ("operation", "signature", "positions", "defaults", "data_name", "detail_name", "detail_default", "describe_data", "local", "every_rank")

    def __init__(
        self, method: Callable[..., Any], describe_data: Callable[[Call], str] | None, local: tuple[str, ...], every_rank: bool = True
    ) -> None:
        self.operation = method.__name__
        self.signature = inspect.signature(method)
        names = list(self.signature.parameters)[1:]  # without self
        self.positions = {name: index for index, name in enumerate(names)}
        self.defaults = {
            name: p.default for name, p in self.signature.parameters.items() if p.default is not inspect.Parameter.empty
        }
        self.data_name = names[0] if names else ""
        """The first parameter: the data the call moves (what the flight recorder notes)."""
        positional = [n for n in names if self.signature.parameters[n].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        self.detail_name = positional[1] if len(positional) > 1 else ""
        """The second positional parameter (``op``, ``src``, ``dst``): what the flight recorder notes besides the data."""
        self.detail_default = self.defaults.get(self.detail_name)
        self.describe_data = describe_data
        self.local = local
        """Parameters that are this rank's own business (a device, an output buffer): not described."""
        self.every_rank = every_rank
        """Whether every rank of the group takes part (not so in a send, a receive or a shrink)."""


class Call:
    """One collective call as hooks see it: the operation, its arguments (bound lazily from the
    method's signature, defaults included), and summaries computed on demand: ``details`` for
    checking, ``payload_bytes`` for profiling."""

    __slots__ = ("comm", "spec", "operation", "args", "kwargs", "result", "record", "_details")

    def __init__(self, comm: Any, spec: CollectiveSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.comm = comm
        self.spec = spec
        self.operation = spec.operation
        self.args = args
        self.kwargs = kwargs
        self.result: Any = None
        """What the call returned (set before :meth:`Hook.after` runs, when it succeeded)."""
        self.record: Any = None
        """Where a recorder keeps its entry for this call between :meth:`Hook.before` and :meth:`Hook.after`."""
        self._details: str | None = None

    def argument(self, name: str) -> Any:
        """The value of parameter ``name`` in this call (its default when not passed)."""
        position = self.spec.positions[name]
        if position < len(self.args):
            return self.args[position]
        return self.kwargs.get(name, self.spec.defaults.get(name))

    @property
    def arguments(self) -> dict[str, Any]:
        """Every parameter by name, defaults included (bound from the method's signature)."""
        return {name: self.argument(name) for name in self.spec.positions}

    @property
    def data(self) -> Any:
        """The call's first argument: the data it moves (``None`` for a barrier)."""
        return self.argument(self.spec.data_name) if self.spec.data_name else None

    @property
    def details(self) -> str:
        """What must match across ranks: the data's layout, then the other arguments (the reduce
        op, src or dst, flags), e.g. ``float32[2, 3] op=sum``."""
        if self._details is None:
            self._details = _describe(self)
        return self._details

    @property
    def payload(self) -> Any:
        """The data the call moves (``None`` for objects and barriers)."""
        return None if self.spec.describe_data is None else self.data

    @property
    def payload_bytes(self) -> int:
        """The bytes the call's data takes: tensors and arrays by size, numbers 8 each, objects 0."""
        payload = self.payload
        return 0 if payload is None else payload_bytes(payload)

    def __repr__(self) -> str:
        return f"Call({self.operation} {self.details})"


def _describe(call: Call) -> str:
    spec = call.spec
    parts = [] if spec.describe_data is None else [spec.describe_data(call)]
    for name in spec.positions:
        if name == spec.data_name or name in spec.local:
            continue
        value = call.argument(name)
        if value is None or value is False:
            continue
        parts.append(name if value is True else f"op={op_name(value)}" if name == "op" else f"{name}={value}")
    return " ".join(part for part in parts if part)


def describe_data(call: Call) -> str:
    """The default description of a call's data: dtypes and shapes of its tensors, kinds of other leaves."""
    return signature_of(call.data)


def describe_filled(call: Call) -> str:
    """The description of a call that fills its data in place (a lone tensor that cannot be filled says so)."""
    return filled_signature(call.data)


class Hook:
    """Work done around every collective of a communicator; subclasses override what they need."""

    order: ClassVar[int] = 50
    """Lower runs :meth:`before` earlier and :meth:`after` later: recorder -100, checks 0, timers 100."""

    def before(self, call: Call) -> None:
        """Called before the collective starts; raising here stops the call."""

    def after(self, call: Call, error: BaseException | None) -> None:
        """Called when the collective returned (``error`` is ``None``) or raised ``error``; only for
        hooks whose :meth:`before` returned."""

    def for_split(self, child: Any) -> Hook | None:
        """The hook to attach to a communicator split from this one (``None``: none)."""
        return None


class Recorder(Hook):
    """A hook that keeps a record of calls (:class:`~distcomm.FlightRecorder` is one): it runs
    first and last, and a communicator has at most one. Split children record into the same one."""

    order = -100  # outermost: it sees every call start, and every failure, checks included

    def start(self, comm: Any, spec: CollectiveSpec, args: tuple[Any, ...], kwargs: dict[str, Any], caller: FrameType | None) -> Any:
        """Note that a call starts: ``comm``'s ``spec`` with ``args`` and ``kwargs``, called from the
        frame ``caller``. What it returns is handed to :meth:`end`. A call with no other hook comes
        here straight from the collective, without a :class:`Call` (the recorder's price is per call)."""
        return None

    def end(self, record: Any, error: BaseException | None) -> None:
        """Note that the call :meth:`start` returned ``record`` for has ended (``error``: how it failed)."""

    def before(self, call: Call) -> None:
        call.record = self.start(call.comm, call.spec, call.args, call.kwargs, _getframe(3))  # the collective's caller

    def after(self, call: Call, error: BaseException | None) -> None:
        self.end(call.record, error)

    def for_split(self, child: Any) -> Hook | None:
        return self

    def dump(self, reason: str = "requested") -> Path | None:
        """Write the record now; its path, or ``None``. Never raises."""
        return None


class HookHandle:
    """Returned by :meth:`~distcomm.Communicator.register_hook`; :meth:`remove` detaches the hook."""

    def __init__(self, chain: HookChain, hook: Hook) -> None:
        self._chain = chain
        self.hook = hook

    def remove(self) -> None:
        """Detach the hook (harmless when repeated)."""
        self._chain.remove(self.hook)

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


class HookChain:
    """The hooks of one communicator: its own, after those of the communicator it is a view of
    (whose later changes it sees, live). ``hooks`` is what every call passes through, in order."""

    def __init__(self, hooks: tuple[Hook, ...] = (), parent: HookChain | None = None) -> None:
        for hook in hooks:
            if not isinstance(hook, Hook):
                raise InvalidArgumentError(f"hooks are distcomm.instrument.hooks.Hook objects, got {type(hook).__name__}")
        self._parent = parent
        self._views: weakref.WeakSet[HookChain] = weakref.WeakSet()
        self.own: tuple[Hook, ...] = ()
        """The hooks attached here (not the parent's)."""
        self.hooks: tuple[Hook, ...] = ()
        """Every hook a call passes through, in the order they run: the parent's and its own."""
        self.route: tuple[tuple[Hook, ...], Recorder | None] = ((), None)
        """What every call reads, in one read: :attr:`hooks`, and the recorder when it is the only
        hook and keeps the start/end protocol (then calls go to it straight, without a :class:`Call`)."""
        with _registration:
            if parent is not None:
                parent._views.add(self)
            self._set_own(hooks)

    def add(self, hook: Hook) -> None:
        """Pass every call through ``hook`` from now on (a :class:`Recorder` replaces the one recording now)."""
        if not isinstance(hook, Hook):
            raise InvalidArgumentError(f"register_hook takes a distcomm.instrument.hooks.Hook, got {type(hook).__name__}")
        with _registration:  # a new tuple each time: a call running meanwhile keeps the one it read
            self._set_own((*self.own, hook))

    def remove(self, hook: Hook) -> None:
        """Stop passing calls through ``hook`` (harmless when it is not attached here)."""
        with _registration:
            self._set_own(tuple(h for h in self.own if h is not hook))

    def _set_own(self, hooks: tuple[Hook, ...]) -> None:
        if any(isinstance(h, Recorder) for h in hooks):  # the newest recorder takes the place of the others
            newest = [h for h in hooks if isinstance(h, Recorder)][-1]
            hooks = tuple(h for h in hooks if not isinstance(h, Recorder) or h is newest)
        self.own = hooks
        self._refresh()

    def _refresh(self) -> None:
        inherited = () if self._parent is None else self._parent.hooks
        if any(isinstance(h, Recorder) for h in self.own):
            inherited = tuple(h for h in inherited if not isinstance(h, Recorder))
        self.hooks = tuple(sorted((*inherited, *self.own), key=lambda h: h.order))
        alone = self.hooks[0] if len(self.hooks) == 1 else None
        direct = isinstance(alone, Recorder) and type(alone).before is Recorder.before and type(alone).after is Recorder.after
        self.route = (self.hooks, alone if direct else None)  # type: ignore[assignment]  # one tuple: one read per call
        for view in list(self._views):
            view._refresh()

    def for_split(self, child: Any) -> tuple[Hook, ...]:
        """The hooks of this chain's own that ``child``, a communicator split from its owner, should
        have: the one rule by which instrumentation reaches split communicators."""
        derived = (hook.for_split(child) for hook in self.own)
        return tuple(hook for hook in derived if hook is not None)

    @property
    def recorder(self) -> Recorder | None:
        """The hook that records calls, where one does."""
        return next((h for h in self.hooks if isinstance(h, Recorder)), None)


_registration = threading.RLock()
"""Serialises hook registration, so two threads registering at once both take effect."""

COLLECTIVES: dict[str, Callable[..., Any]] = {}
"""Every method declared with :func:`collective`, by name (the hook coverage test reads it)."""


def collective(
    describe: Callable[[Call], str] | None = describe_data, *, local: tuple[str, ...] = (), every_rank: bool = True
) -> Callable[[Callable[Concatenate[Self, P], R]], Callable[Concatenate[Self, P], R]]:
    """Declare a public collective: it refuses a closed communicator, passes through the hooks,
    and names itself in a :class:`CollectiveError` raised by any of its steps.

    ``describe`` says what of the call's data must match across ranks (``None``: the data is
    an object, not described and not counted as payload); ``local`` names parameters that
    are each rank's own (a device, an output buffer). Both run only when a hook asks.
    ``every_rank=False`` marks a call in which only some ranks take part (a send, a shrink).
    """

    def decorate(method: Callable[Concatenate[Self, P], R]) -> Callable[Concatenate[Self, P], R]:
        spec = CollectiveSpec(method, describe, local, every_rank)

        @functools.wraps(method)
        def run(self: Self, /, *args: P.args, **kwargs: P.kwargs) -> R:
            if self._state.closed:
                raise ClosedCommunicatorError(f"{spec.operation} on a closed {type(self).__name__}: create a new communicator")
            hooks, recorder = self._hook_chain.route  # read once: a hook added or removed meanwhile takes effect at the next call
            if recorder is not None:  # the default: the flight recorder alone, without a Call (written here, not
                # called, to spare every call a frame): the same order of events as _through
                record = recorder.start(self, spec, args, kwargs, _getframe(1))  # the collective's caller
                try:
                    result = method(self, *args, **kwargs)
                except CollectiveError as error:
                    named = renamed(error, spec.operation, self.rank)
                    recorder.end(record, named)
                    raise named  # noqa: B904 (renamed() sets the cause)
                except BaseException as error:
                    recorder.end(record, error)
                    raise
                recorder.end(record, None)
                return result
            if hooks:
                return _through(hooks, Call(self, spec, args, kwargs), method)  # type: ignore[no-any-return]
            try:
                return method(self, *args, **kwargs)
            except CollectiveError as error:
                raise renamed(error, spec.operation, self.rank)  # noqa: B904 (renamed() sets the cause)

        COLLECTIVES[spec.operation] = run
        return run

    return decorate


def _through(hooks: tuple[Hook, ...], call: Call, method: Callable[..., Any]) -> Any:
    """Run ``method`` between the ``before`` and ``after`` of ``hooks`` (the tuple the call started
    with). A :class:`CollectiveError` of the method is named after it, as the caller sees it,
    before the hooks see it; a hook's own error passes as it is."""
    entered = 0
    try:
        for hook in hooks:
            hook.before(call)
            entered += 1
        try:
            call.result = method(call.comm, *call.args, **call.kwargs)
        except CollectiveError as error:
            raise renamed(error, call.operation, call.comm.rank)  # noqa: B904 (renamed() sets the cause)
    except BaseException as error:
        for hook in reversed(hooks[:entered]):
            hook.after(call, error)
        raise
    for hook in reversed(hooks):
        hook.after(call, None)
    return call.result
