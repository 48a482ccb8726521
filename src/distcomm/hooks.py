"""Hooks: how checking, profiling and recording see every collective of a communicator.

Every public collective of :class:`~distcomm.Communicator` is declared with the
:func:`collective` decorator, so it passes through the communicator's hooks by
construction: a method added later cannot forget them. A hook's :meth:`Hook.before`
runs before the call and :meth:`Hook.after` after it (also when it failed), in order
of :attr:`Hook.order`: checks first, timers closest to the call, so a profile does not
include a checker's round trips. The flight recorder (:mod:`distcomm.flight_recorder`)
is a hook too, the outermost one; the wrapper calls it directly rather than through the
general dispatch, which keeps it within about a microsecond per call. With no hook and
no recorder attached, a call pays two attribute tests.

Attach a hook with :meth:`Communicator.register_hook`; the returned
:class:`HookHandle` removes it.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeVar, cast

from distcomm.errors import ClosedCommunicatorError, CollectiveError, InvalidArgumentError, renamed

if TYPE_CHECKING:
    from pathlib import Path

    from distcomm.backend import Backend

F = TypeVar("F", bound=Callable[..., Any])


class Call:
    """One collective call as hooks see it: the operation, its arguments, and lazily
    computed summaries (``details`` for checking, ``payload_bytes`` for profiling)."""

    __slots__ = ("comm", "operation", "args", "kwargs", "_describe", "_payload", "_details", "result")

    def __init__(
        self,
        comm: HookRegistry,
        operation: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        describe: Callable[..., str] | None,
        payload: Callable[..., Any] | None,
    ) -> None:
        self.comm = comm
        self.operation = operation
        self.args = args
        self.kwargs = kwargs
        self._describe = describe
        self._payload = payload
        self._details: str | None = None
        self.result: Any = None
        """What the call returned (set before :meth:`Hook.after` runs, when it succeeded)."""

    @property
    def details(self) -> str:
        """What must match across ranks: dtypes, shapes, the reduce op, src or dst."""
        if self._details is None:
            self._details = "" if self._describe is None else self._describe(*self.args, **self.kwargs)
        return self._details

    @property
    def payload(self) -> Any:
        """The data the call moves (``None`` for objects and barriers)."""
        return None if self._payload is None else self._payload(*self.args, **self.kwargs)

    @property
    def payload_bytes(self) -> int:
        """The bytes the call's data takes: tensors and arrays by size, numbers 8 each, objects 0."""
        from distcomm.signatures import payload_bytes  # here, to keep this module free of torch

        payload = self.payload
        return 0 if payload is None else payload_bytes(payload)

    def __repr__(self) -> str:
        return f"Call({self.operation} {self.details})"


class Hook:
    """Work done around every collective of a communicator; subclasses override what they need."""

    order: ClassVar[int] = 50
    """Lower runs :meth:`before` earlier and :meth:`after` later: checks 0, timers 100."""

    def before(self, call: Call) -> None:
        """Called before the collective starts; raising here stops the call."""

    def after(self, call: Call, error: BaseException | None) -> None:
        """Called when the collective returned (``error`` is ``None``) or raised ``error``."""

    def for_split(self, child: HookRegistry) -> Hook | None:
        """The hook to attach to a communicator split from this one (``None``: none)."""
        return None


class HookHandle:
    """Returned by :meth:`Communicator.register_hook`; :meth:`remove` detaches the hook."""

    def __init__(self, comm: HookRegistry, hook: Hook) -> None:
        self._comm = comm
        self.hook = hook

    def remove(self) -> None:
        """Detach the hook (harmless when repeated)."""
        self._comm.remove_hook(self.hook)

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


STARTED, COMPLETED, FAILED = "started", "completed", "failed"
"""The states of a recorded call."""
END, STATE = 9, 10
"""Where a recorded entry keeps its end time and its state: a collective's wrapper completes a
successful entry itself, in place, which is cheaper than a call."""


class Recorder(Hook):
    """A hook that every collective's wrapper calls directly, first and last: :meth:`begin` when
    the call starts and :meth:`end` when it failed (a success the wrapper writes into the
    entry itself, at :data:`END` and :data:`STATE`). :class:`~distcomm.FlightRecorder` is one;
    a communicator has at most one."""

    order = -100  # outermost: it sees every call start, and every failure, checks included

    def group(self, name: str) -> Any:
        """The key a communicator of group ``name`` records under."""
        raise NotImplementedError

    def begin(self, group_key: Any, call: tuple[str, str], data: Any, detail: Any) -> list[Any]:
        """Record that ``call`` starts now; the entry (a list) that :meth:`end` completes."""
        raise NotImplementedError

    def end(self, entry: list[Any], error: BaseException | None) -> None:
        """Complete ``entry``: completed, or failed with ``error``."""
        raise NotImplementedError

    def dump(self, reason: str = "requested") -> Path | None:
        """Write the record now; its path, or ``None``. Never raises."""
        return None


class HookRegistry:
    """The hooks of a communicator (its base class): attach, detach, list; and its flight recorder."""

    rank: int
    world_size: int
    _hooks: tuple[Hook, ...]
    _recorder: Recorder | None
    _record_group: Any
    _backend: Backend

    @property
    def hooks(self) -> tuple[Hook, ...]:
        """The hooks every collective of this communicator passes through, in the order they run
        (the flight recorder, when one records, first)."""
        return self._hooks if self._recorder is None else (self._recorder, *self._hooks)

    def register_hook(self, hook: Hook) -> HookHandle:
        """Pass every collective through ``hook`` from now on; the handle's ``remove()`` stops it.

        A :class:`Recorder` (such as :class:`~distcomm.FlightRecorder`) takes the place of the
        one recording now.
        """
        if not isinstance(hook, Hook):
            raise InvalidArgumentError(f"register_hook takes a distcomm.hooks.Hook, got {type(hook).__name__}")
        with _registration:  # a new tuple each time: a collective running meanwhile keeps the one it read
            if isinstance(hook, Recorder):
                self._record_into(hook)
            else:
                self._hooks = tuple(sorted((*self._hooks, hook), key=lambda h: h.order))
        return HookHandle(self, hook)

    def remove_hook(self, hook: Hook) -> None:
        """Stop passing collectives through ``hook`` (harmless when it is not attached)."""
        with _registration:
            if hook is self._recorder:
                self._recorder = None
            self._hooks = tuple(h for h in self._hooks if h is not hook)

    def _record_into(self, recorder: Recorder | None) -> None:
        """Record this communicator's calls into ``recorder``, under its group's name (the same on every rank)."""
        self._recorder = recorder
        if recorder is not None:
            self._record_group = recorder.group(str(getattr(self._backend.group, "group_name", "") or self._backend.name))

    @property
    def flight_recorder(self) -> Recorder | None:
        """The recorder of this communicator's calls (``None`` with ``DISTCOMM_FLIGHT_RECORDER=0``)."""
        return self._recorder

    def dump_flight_record(self, reason: str = "requested") -> Path | None:
        """Write this rank's flight record now (see :mod:`distcomm.flight_recorder`); its path,
        or ``None`` when nothing records or it could not be written. Never raises."""
        return None if self._recorder is None else self._recorder.dump(reason)


_registration = threading.Lock()
"""Serialises hook registration, so two threads registering at once both take effect."""

COLLECTIVES: dict[str, Callable[..., Any]] = {}
"""Every method declared with :func:`collective`, by name (the hook coverage test reads it)."""


def collective(describe: Callable[..., str] | None = None, payload: Callable[..., Any] | None = None) -> Callable[[F], F]:
    """Declare a public collective: it refuses a closed communicator, passes through the
    hooks, and names itself in a :class:`CollectiveError` raised by any of its steps.

    ``describe`` and ``payload`` take the method's arguments and give the call's
    details and data; they run only when a hook asks.
    """

    def decorate(method: F) -> F:
        operation = method.__name__

        def closed(comm: HookRegistry) -> ClosedCommunicatorError:
            return ClosedCommunicatorError(f"{operation} on a closed {type(comm).__name__}: create a new communicator")

        def hooked(comm: HookRegistry, hooks: tuple[Hook, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            call = Call(comm, operation, args, kwargs, describe, payload)
            return _dispatch(hooks, call, lambda: _named(method, comm, operation, args, kwargs))

        def raise_named(error: CollectiveError, rank: int) -> NoReturn:
            _raise_named(error, operation, rank)

        run = _with_signature_of(method, closed, hooked, raise_named)
        COLLECTIVES[operation] = run
        return cast(F, run)

    return decorate


_TEMPLATE = """
def {name}(self, {parameters}):
    if self._state.closed:
        raise closed(self)
    recorder = self._recorder
    hooks = self._hooks  # read once: a hook added or removed meanwhile takes effect at the next call
    if recorder is None:
        if hooks:
            return hooked(self, hooks, ({positional}), {{{keywords}}})
        try:
            return method(self, {arguments})
        except CollectiveError as error:
            raise_named(error, self.rank)
    entry = recorder.begin(self._record_group, CALL, {data}, {detail})
    try:
        result = hooked(self, hooks, ({positional}), {{{keywords}}}) if hooks else method(self, {arguments})
    except CollectiveError as error:
        named = error if hooks else renamed(error, {name!r}, self.rank)  # the hooks' path names its own
        recorder.end(entry, named)
        if named is error:
            raise
        raise named from error
    except BaseException as error:
        recorder.end(entry, error)
        raise
    entry[END] = now()
    entry[STATE] = COMPLETED
    return result
"""


def _with_signature_of(method: Callable[..., Any], closed: Any, hooked: Any, raise_named: Any) -> Callable[..., Any]:
    """The wrapper of a collective, written with the method's own parameters: a call through it
    packs no ``*args``/``**kwargs``, which keeps the hot paths within a microsecond of torch.
    The flight recorder, on by default, is called here directly rather than through the
    general hook dispatch, for the same reason; it still sees every call first and last."""
    parameters = list(inspect.signature(method).parameters.values())[1:]  # without self
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    keywords = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]
    if len(positional) + len(keywords) != len(parameters):
        raise TypeError(f"a collective takes plain and keyword-only parameters: {method.__qualname__}")
    detail_name = positional[1] if len(positional) > 1 else ""
    source = _TEMPLATE.format(
        name=method.__name__,
        data=positional[0] if positional else "None",
        detail_name=detail_name,
        detail=detail_name or "None",
        parameters=", ".join(positional + (["*"] + keywords if keywords else [])),
        positional="".join(f"{name}, " for name in positional),
        keywords=", ".join(f"{name!r}: {name}" for name in keywords),
        arguments=", ".join(positional + [f"{name}={name}" for name in keywords]),
    )
    namespace: dict[str, Any] = {}
    scope = {
        "method": method, "closed": closed, "hooked": hooked, "raise_named": raise_named,
        "CollectiveError": CollectiveError, "renamed": renamed,
        "END": END, "STATE": STATE, "COMPLETED": COMPLETED,
        "now": time.monotonic_ns, "CALL": (method.__name__, detail_name),
    }  # fmt: skip
    exec(compile(source, f"<distcomm collective {method.__qualname__}>", "exec"), scope, namespace)  # noqa: S102
    run = namespace[method.__name__]
    run.__defaults__, run.__kwdefaults__ = method.__defaults__, method.__kwdefaults__
    return functools.update_wrapper(run, method)


def _named(method: Callable[..., Any], comm: HookRegistry, operation: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return method(comm, *args, **kwargs)
    except CollectiveError as error:
        _raise_named(error, operation, comm.rank)


def _raise_named(error: CollectiveError, operation: str, rank: int) -> NoReturn:
    """Raise ``error`` as ``operation``'s, the method the caller called, naming the step that failed."""
    named = renamed(error, operation, rank)
    if named is error:
        raise error
    raise named from error


def _dispatch(hooks: tuple[Hook, ...], call: Call, run: Callable[[], Any]) -> Any:
    """Run ``run`` between the ``before`` and ``after`` of ``hooks`` (the tuple the call started with)."""
    entered: list[Hook] = []
    try:
        for hook in hooks:
            hook.before(call)
            entered.append(hook)
        call.result = run()
    except BaseException as error:
        for hook in reversed(entered):
            hook.after(call, error)
        raise
    for hook in reversed(hooks):
        hook.after(call, None)
    return call.result
