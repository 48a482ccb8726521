"""What a collective call looks like to its hooks: the signature that must match across
ranks (for checking and recording) and the bytes it moves (for profiling)."""

from __future__ import annotations

from typing import Any

import torch

from distcomm.values.conversion import describe, dtype_name, is_expanded
from distcomm.values.nested import flatten
from distcomm.values.ops import ReduceOpLike, parse_reduce_op
from distcomm.wire.mismatch import digest64


def signature_of(data: Any, *, shapes: bool = True) -> str:
    """What must match across ranks for a collective on ``data``: dtypes and shapes of tensors,
    kinds of other leaves. With ``shapes=False`` only dtypes and numbers of dimensions."""
    if isinstance(data, torch.Tensor):
        text = describe(data)
        return text if shapes else f"{dtype_name(data.dtype)}[{data.dim()}d]"
    leaves, paths, _ = flatten(data)
    if len(leaves) == 1 and leaves[0] is data:
        return describe(data)
    # In key-path order, as the communicator matches leaves; the digest covers every leaf.
    entries = sorted(zip(paths, (signature_of(leaf, shapes=shapes) for leaf in leaves)))
    inner = ", ".join(text for _, text in entries[:8])
    more = f", ... {len(entries)} leaves" if len(entries) > 8 else ""
    return f"{type(data).__name__}({inner}{more}) #{digest64(repr(entries).encode()) & _DIGEST_MASK:012x}"


def filled_signature(data: Any) -> str:
    """:func:`signature_of` for a call that fills ``data`` in place: a lone tensor that cannot be
    filled (an expanded view, a meta tensor) says so, so that checking names the rank that passed it."""
    text = signature_of(data)
    if isinstance(data, torch.Tensor) and (data.is_meta or is_expanded(data)):
        return f"{text} (expanded or meta: cannot be filled)"
    return text


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


def op_name(op: ReduceOpLike) -> str:
    try:
        return parse_reduce_op(op).value
    except ValueError:
        return repr(op)  # the inner communicator raises the clear error
