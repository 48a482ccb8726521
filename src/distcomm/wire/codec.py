"""How object collectives turn objects into bytes and back.

:class:`PickleCodec` is plain pickle: any picklable object, and any payload is trusted.
:class:`RestrictedCodec` is the opt-in safe mode: it refuses to rebuild anything but
builtins, tensors, NumPy arrays and classes registered with :func:`register_safe_class`
(or given to it), so a malicious peer cannot run code through a crafted payload.
Tensors and arrays travel as raw bytes with their dtype and shape, so no torch or
NumPy rebuilding function has to be trusted. Set ``DISTCOMM_SAFE_OBJECTS=1`` to make
it the default for every new communicator.
"""

from __future__ import annotations

import builtins
import collections
import io
import math
import pickle
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
import torch

from distcomm.environment.job import environment_flag
from distcomm.errors import InvalidArgumentError, ObjectDecodeError, UnsafeObjectError
from distcomm.values.dtypes import DTYPES_BY_NAME


class ObjectCodec(Protocol):
    """Turns objects into bytes and back."""

    def encode(self, obj: Any) -> bytes: ...

    def decode(self, payload: bytes) -> Any: ...


DEFAULT_MAX_BYTES = 2**34
"""The largest payload plain pickle sends or accepts (16 GiB): a sanity bound on length fields."""
SAFE_MAX_BYTES = 2**28
"""What the restricted codec accepts by default (256 MiB), encoded or decoded."""
SAFE_MAX_ITEMS = 10**7
"""The most items the restricted codec lets one container, string or range constructor make."""


def max_payload_bytes(codec: Any) -> int:
    """The payload size a codec sends and accepts at most (its ``max_bytes``, else the default)."""
    limit = getattr(codec, "max_bytes", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_BYTES


class PickleCodec:
    """Plain pickle (the default): fast, and it trusts every peer.

    ``max_bytes`` bounds the payloads it sends and accepts, so a corrupt length field
    gives a clear error instead of a huge allocation.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = _positive(max_bytes, "max_bytes")

    def encode(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, payload: bytes) -> Any:
        try:
            return pickle.loads(payload)
        except Exception as error:
            raise ObjectDecodeError(f"a peer's payload could not be unpickled: {type(error).__name__}: {error}") from error


_SAFE_BUILTINS = frozenset(
    {"int", "float", "complex", "bool", "str", "bytes", "bytearray", "list", "tuple", "dict", "set",
     "frozenset", "slice", "range", "Ellipsis"}
)  # fmt: skip
_SAFE_GLOBALS: set[tuple[str, str]] = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("collections", "Counter"),
    ("collections", "deque"),
    # distcomm's own metadata, sent by nested all_gather and scatter_object
    ("distcomm.values.nested", "TreeSpec"),
}
_NUMPY_KINDS = frozenset("biufc")


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    return value


def register_safe_class(cls: type) -> type:
    """Allow ``cls`` to be rebuilt by every :class:`RestrictedCodec`; usable as a decorator."""
    if not isinstance(cls, type):
        raise InvalidArgumentError(f"register_safe_class takes a class, got {cls!r}")
    _SAFE_GLOBALS.add((cls.__module__, cls.__qualname__))
    return cls


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            tensor = obj.detach().cpu().contiguous()
            raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
            return ("tensor", str(tensor.dtype), tuple(tensor.shape), raw)
        if isinstance(obj, np.ndarray) and obj.dtype.kind in _NUMPY_KINDS:
            return ("ndarray", obj.dtype.str, obj.shape, np.ascontiguousarray(obj).tobytes())
        return None


_SIZED_CONSTRUCTORS: dict[Any, str] = {
    **{getattr(builtins, n): f"builtins.{n}" for n in ("bytes", "bytearray", "list", "tuple", "dict", "set", "frozenset", "range")},
    **{getattr(collections, n): f"collections.{n}" for n in ("OrderedDict", "Counter", "deque", "defaultdict")},
}
"""Allowed callables whose arguments can ask for a huge allocation from a tiny payload, by name."""


def _check_argument(name: str, arg: Any, max_bytes: int, max_items: int) -> None:
    """Refuse an argument of ``name`` that would make it allocate more than the limits allow."""
    if isinstance(arg, int) and not isinstance(arg, bool) and arg > max_bytes:
        raise UnsafeObjectError(f"refusing {name}({arg}): it would allocate over {max_bytes} bytes")
    if isinstance(arg, (str, bytes, bytearray, int, float, complex, bool)) or arg is None:
        return
    try:
        size = len(arg)
    except (TypeError, OverflowError):
        if isinstance(arg, range):  # too long to count
            raise UnsafeObjectError(f"refusing {name} of a range too long to count") from None
        return
    if size > max_items:
        raise UnsafeObjectError(f"refusing {name} of {size} items: the limit is {max_items} (RestrictedCodec max_items)")


class _Unpickler(pickle._Unpickler):
    """Pickle's own Python unpickler with an allowlist, and bounds on every call it makes.

    ``find_class`` gives back the real classes (a ``dict`` in a payload is ``dict``);
    the opcodes that call something (REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ) check the
    arguments of the size-taking constructors before calling, and their results after.
    """

    stack: list[Any]
    append: Any
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, payload: bytes, allowed: set[tuple[str, str]], max_bytes: int, max_items: int) -> None:
        super().__init__(io.BytesIO(payload))
        self._allowed = allowed
        self._max_bytes = max_bytes
        self._max_items = max_items

    def _call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], make: Any) -> Any:
        name = _SIZED_CONSTRUCTORS.get(func) if isinstance(func, type) else None
        if name is None:
            return make()
        for arg in (*args, *kwargs.values()):
            _check_argument(name, arg, self._max_bytes, self._max_items)
        value = make()
        _check_argument(name, value, self._max_bytes, self._max_items)
        return value

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self.stack[-1] = self._call(func, args, {}, lambda: func(*args))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, {}, lambda: cls.__new__(cls, *args)))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, kwargs, lambda: cls.__new__(cls, *args, **kwargs)))

    def _instantiate(self, klass: Any, args: tuple[Any, ...]) -> None:
        self.append(self._call(klass, tuple(args), {}, lambda: klass(*args)))

    dispatch[pickle.REDUCE[0]] = load_reduce  # type: ignore[assignment]
    dispatch[pickle.NEWOBJ[0]] = load_newobj  # type: ignore[assignment]
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex  # type: ignore[assignment]

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if (module, name) in self._allowed or (module, name) in _SAFE_GLOBALS:
            if module == "collections":
                return getattr(collections, name)
            return super().find_class(module, name)
        raise UnsafeObjectError(
            f"refusing to unpickle {module}.{name}: it is not on the safe list; if you trust it, "
            "register it with distcomm.wire.codec.register_safe_class"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 4):
            raise UnsafeObjectError(f"refusing a persistent id that is not (kind, dtype, shape, bytes): {pid!r:.80}")
        kind, dtype, shape, raw = pid
        if not (isinstance(raw, bytes) and isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise UnsafeObjectError(f"refusing a {kind!r} whose shape or data is malformed")
        if kind == "tensor" and dtype in DTYPES_BY_NAME:
            torch_dtype = DTYPES_BY_NAME[dtype]
            _check_size(kind, shape, torch_dtype.itemsize, raw)
            if not raw:
                return torch.empty(shape, dtype=torch_dtype)
            return torch.frombuffer(bytearray(raw), dtype=torch_dtype).reshape(shape)
        if kind == "ndarray" and isinstance(dtype, str) and _numpy_kind(dtype) in _NUMPY_KINDS:
            _check_size(kind, shape, np.dtype(dtype).itemsize, raw)
            return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
        raise UnsafeObjectError(f"refusing to rebuild a {kind!r} of dtype {dtype!r}")


def _numpy_kind(dtype: str) -> str:
    """The kind letter of a NumPy dtype string a peer sent, or ``""`` when it names none."""
    try:
        return np.dtype(dtype).kind
    except (TypeError, ValueError):
        return ""


def _check_size(kind: str, shape: tuple[int, ...], itemsize: int, raw: bytes) -> None:
    """The data must be exactly as long as the shape says, before anything is allocated."""
    if math.prod(shape) * itemsize != len(raw):
        raise UnsafeObjectError(
            f"refusing a {kind} of shape {list(shape)}: it needs {math.prod(shape) * itemsize} bytes but "
            f"{len(raw)} came"
        )


class RestrictedCodec:
    """Safe mode: rebuilds only builtins, tensors (on the CPU), NumPy arrays and allowed classes.

    It also bounds what a payload may expand to: ``max_bytes`` for the payload and for
    any one allocation a constructor asks for, ``max_items`` for any one container,
    string or range that a constructor builds.
    """

    def __init__(self, allowed: Iterable[type] = (), *, max_bytes: int = SAFE_MAX_BYTES, max_items: int = SAFE_MAX_ITEMS) -> None:
        self._allowed = {(cls.__module__, cls.__qualname__) for cls in allowed}
        self.max_bytes = _positive(max_bytes, "max_bytes")
        self.max_items = _positive(max_items, "max_items")

    def encode(self, obj: Any) -> bytes:
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return buffer.getvalue()

    def decode(self, payload: bytes) -> Any:
        try:
            if len(payload) > self.max_bytes:
                raise UnsafeObjectError(f"refusing a payload of {len(payload)} bytes: the limit is {self.max_bytes}")
            return _Unpickler(payload, self._allowed, self.max_bytes, self.max_items).load()
        except UnsafeObjectError:
            raise
        except Exception as error:
            raise UnsafeObjectError(f"the payload is not a valid restricted pickle: {error}") from error


def default_codec() -> ObjectCodec:
    """The codec of new communicators: restricted when ``DISTCOMM_SAFE_OBJECTS=1``."""
    if environment_flag("DISTCOMM_SAFE_OBJECTS"):
        return RestrictedCodec()
    return PickleCodec()
