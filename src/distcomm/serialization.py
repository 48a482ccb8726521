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
import os
import pickle
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
import torch

from distcomm.errors import InvalidArgumentError


class UnsafeObjectError(InvalidArgumentError):
    """A payload asked to rebuild something outside the allowlist of the restricted codec."""


class ObjectCodec(Protocol):
    """Turns objects into bytes and back."""

    def encode(self, obj: Any) -> bytes: ...

    def decode(self, payload: bytes) -> Any: ...


class PickleCodec:
    """Plain pickle (the default): fast, and it trusts every peer."""

    def encode(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, payload: bytes) -> Any:
        return pickle.loads(payload)


_SAFE_BUILTINS = frozenset(
    {"int", "float", "complex", "bool", "str", "bytes", "bytearray", "list", "tuple", "dict", "set",
     "frozenset", "slice", "range", "Ellipsis"}
)  # fmt: skip
_SAFE_GLOBALS: set[tuple[str, str]] = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("collections", "Counter"),
    ("collections", "deque"),
    # distcomm's own metadata, sent by nested all_gather and scatter_objects
    ("distcomm.nested", "TreeSpec"),
    ("distcomm.communicator", "_Refused"),
}
_TORCH_DTYPES = {str(d): d for d in (
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
)}  # fmt: skip
_NUMPY_KINDS = frozenset("biufc")


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


class _Unpickler(pickle.Unpickler):
    def __init__(self, payload: bytes, allowed: set[tuple[str, str]]) -> None:
        super().__init__(io.BytesIO(payload))
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if (module, name) in self._allowed or (module, name) in _SAFE_GLOBALS:
            if module == "collections":
                return getattr(collections, name)
            return super().find_class(module, name)
        raise UnsafeObjectError(
            f"refusing to unpickle {module}.{name}: it is not on the safe list; if you trust it, "
            "register it with distcomm.serialization.register_safe_class"
        )

    def persistent_load(self, pid: Any) -> Any:
        kind, dtype, shape, raw = pid
        if kind == "tensor" and dtype in _TORCH_DTYPES:
            if not raw:
                return torch.empty(shape, dtype=_TORCH_DTYPES[dtype])
            return torch.frombuffer(bytearray(raw), dtype=_TORCH_DTYPES[dtype]).reshape(shape)
        if kind == "ndarray" and np.dtype(dtype).kind in _NUMPY_KINDS:
            return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
        raise UnsafeObjectError(f"refusing to rebuild a {kind!r} of dtype {dtype!r}")


class RestrictedCodec:
    """Safe mode: rebuilds only builtins, tensors (on the CPU), NumPy arrays and allowed classes."""

    def __init__(self, allowed: Iterable[type] = ()) -> None:
        self._allowed = {(cls.__module__, cls.__qualname__) for cls in allowed}

    def encode(self, obj: Any) -> bytes:
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return buffer.getvalue()

    def decode(self, payload: bytes) -> Any:
        try:
            return _Unpickler(payload, self._allowed).load()
        except UnsafeObjectError:
            raise
        except Exception as error:
            raise UnsafeObjectError(f"the payload is not a valid restricted pickle: {error}") from error


def default_codec() -> ObjectCodec:
    """The codec of new communicators: restricted when ``DISTCOMM_SAFE_OBJECTS=1``."""
    if os.environ.get("DISTCOMM_SAFE_OBJECTS", "").strip().lower() in ("1", "true", "yes"):
        return RestrictedCodec()
    return PickleCodec()
