"""Broadcasts of tensors and nested data: tensors are filled in place, the rest is ``src``'s.

Ranks first agree on which tensors take part (key path, dtype, shape), so a rank that
passes a tensor where ``src`` does not, or another shape, raises on every rank instead
of reading bytes meant as something else. A tensor of at most 8 bytes (a scalar: a seed,
a flag, a loss) travels in the agreement's own check where the check can carry it
(:mod:`distcomm.wire.call_check`): one collective, as a raw broadcast takes.

Tested with the communicator's broadcasts: tests/test_communicator.py, tests/wire/test_layout_agreement.py, tests/wire/test_call_check.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from distcomm.backends.handles import CompletedHandle, Handle
from distcomm.errors import InvalidArgumentError
from distcomm.values.conversion import check_fillable, describe, is_plain
from distcomm.values.nested import flatten, unflatten
from distcomm.wire.call_check import ands_bits
from distcomm.wire.layout_agreement import Claim, agree, agree_carrying, claim_header
from distcomm.wire.objects import broadcast_object

if TYPE_CHECKING:
    from distcomm.wire.context import WireContext


def broadcast_data(context: WireContext, data: Any, src: int) -> Any:
    """``src``'s ``data`` on every rank, tensors filled in place (see :meth:`Communicator.broadcast`)."""
    if isinstance(data, torch.Tensor) and context.world_size > 1:
        return _broadcast_tensor(context, data, src)
    leaves, paths, spec = flatten(data)
    tensors = sorted((path, i) for i, (path, leaf) in enumerate(zip(paths, leaves)) if isinstance(leaf, torch.Tensor))
    problem = None
    for path, i in tensors:  # what cannot be filled is refused on every rank, in the agreement
        try:
            check_fillable(leaves[i], "broadcast", path)
        except InvalidArgumentError as error:
            problem = problem or str(error)
    if context.world_size > 1:
        agree(context, f"broadcast from {src}", Claim(tuple((path, describe(leaves[i])) for path, i in tensors), problem=problem))
    elif problem is not None:
        raise InvalidArgumentError(problem)
    if not tensors:
        return broadcast_object(context, data, src, "broadcast")
    if isinstance(data, torch.Tensor):
        fill_from(context, data, src)
        return data
    own = {path: leaves[i] for path, i in tensors}
    skeleton = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
    src_spec, others = broadcast_object(context, (spec, skeleton), src, "broadcast")
    src_paths = flatten(unflatten(src_spec, others))[1]
    for _, i in tensors:
        fill_from(context, leaves[i], src)
    return unflatten(src_spec, [own.get(path, leaf) for path, leaf in zip(src_paths, others)])


_TENSOR_CLAIMS: dict[tuple[int, torch.dtype, torch.Size], tuple[Claim, bytes]] = {}


def _broadcast_tensor(context: WireContext, tensor: torch.Tensor, src: int) -> torch.Tensor:
    """A lone tensor: the claim the general path makes for it (so ranks on either path meet),
    remembered by ``src``, dtype and shape."""
    operation = f"broadcast from {src}"
    try:
        check_fillable(tensor, "broadcast", "")
    except InvalidArgumentError as error:  # refused on every rank, in the agreement
        agree(context, operation, Claim((("", describe(tensor)),), problem=str(error)))
        raise AssertionError("a refusal was not raised") from error  # pragma: no cover
    key = (src, tensor.dtype, tensor.shape)
    known = _TENSOR_CLAIMS.get(key)
    if known is None:
        claim = Claim((("", describe(tensor)),))
        known = (claim, claim_header(claim))
        if len(_TENSOR_CLAIMS) < 1024:
            _TENSOR_CLAIMS[key] = known
    if tensor.numel() * tensor.element_size() <= CARRIED_BYTES and ands_bits(context):
        agree_carrying(context, operation, *known, tensor, src)  # one collective: the bytes ride in the check
    else:
        agree(context, operation, *known)
        fill_from(context, tensor, src)
    return tensor


CARRIED_BYTES = 8
"""A broadcast of a tensor of at most this many bytes travels in its check (where the check can carry)."""


def fill_from(context: WireContext, tensor: torch.Tensor, src: int) -> None:
    """Fill ``tensor`` in place with ``src``'s, through a copy when the backend cannot take it as it is."""
    buffer = context.transport(tensor, "broadcast")
    context.backend.broadcast(buffer, src)
    if buffer is not tensor:
        with torch.no_grad():
            tensor.copy_(buffer)


def start_broadcast(context: WireContext, tensor: torch.Tensor, src: int) -> Handle:
    """An in-place broadcast of ``tensor`` in the background where the backend takes it as it is;
    else done at once, through a copy."""
    if not context.accepts(tensor.device) or not is_plain(tensor):
        fill_from(context, tensor, src)
        return CompletedHandle(tensor)
    return context.backend.broadcast_async(tensor, src)
