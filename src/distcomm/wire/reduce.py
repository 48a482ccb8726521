"""Reductions of tensors, numbers, arrays and nested data, over any backend.

The rules (what each leaf travels as, how kinds combine) live in
:mod:`distcomm.values.reduction_rules`; this module carries them out: a lone tensor on the hot path,
and everything else as agree on the layout, one collective per transport dtype and
device, and rebuild the caller's structure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from distcomm.backends.handles import CompletedHandle, Handle
from distcomm.errors import InvalidArgumentError, WireFormatError
from distcomm.values.conversion import check_fillable, from_tensor, is_plain, to_tensor
from distcomm.values.dtypes import fits_int64
from distcomm.values.nested import flatten, map_leaves, unflatten
from distcomm.values.ops import ReduceOp
from distcomm.values.reduction_rules import (
    KIND_CODES,
    NOT_ALONE,
    PYTHON_KINDS,
    PYTHON_PROTOTYPES,
    ReducePlan,
    cached_plan,
    int_bits,
    needs_exact,
    plan_reduction,
    promote,
    reduce_exactly,
    reduce_if_alone,
)
from distcomm.wire.layout_agreement import Claim, agree, claim_header
from distcomm.wire.mismatch import digest64
from distcomm.wire.objects import all_gather_objects

if TYPE_CHECKING:
    from distcomm.wire.context import WireContext


IN_PLACE_OPS: dict[tuple[torch.dtype, object], ReduceOp] = {}
"""(dtype, op as callers spell it) -> the op on the wire, for tensors that a reduction fills in
place with no conversion and no division: the lookup that lets a lone tensor skip planning.
Never a complex dtype, so the lookup's callers need not test for a conjugate bit."""


def reduce_tensor(context: WireContext, tensor: torch.Tensor, op: ReduceOp) -> torch.Tensor:
    """One tensor, no flattening; in place unless its dtype cannot hold the result."""
    plan = cached_plan(tensor, tensor, op, "all_reduce")
    if plan.mean_dtype is None and plan.transport_dtype is tensor.dtype and not tensor.dtype.is_complex:
        IN_PLACE_OPS[tensor.dtype, op] = IN_PLACE_OPS[tensor.dtype, op.value] = plan.op
    if plan.transport_dtype is not tensor.dtype or plan.mean_dtype not in (None, tensor.dtype):
        return reduce_leaves(context, [tensor], [""], op)[0]  # type: ignore[no-any-return]
    backend = context.backend
    if plan.mean_dtype is None and is_plain(tensor) and context.accepts(tensor.device):
        backend.all_reduce(tensor, plan.op)
        return tensor
    buffer = context.transport(tensor, "all_reduce")
    backend.all_reduce(buffer, plan.op)
    with torch.no_grad():  # in place even on a tensor that requires grad, as torch's collectives are
        if plan.mean_dtype is not None:
            buffer.div_(context.world_size)
        if buffer is not tensor:
            tensor.copy_(buffer)
    return tensor


def reduce_structure(context: WireContext, data: Any, op: ReduceOp, operation: str, *, detach: bool = False) -> Any:
    """Reduce numbers, arrays and nested data: agree on the layout, then reduce the leaves
    in an order every rank shares (sorted by key path), and rebuild the caller's structure.
    With ``detach``, tensors are left alone and the result holds new, detached tensors."""
    if type(data) is dict:
        as_dict = reduce_tensor_dict(context, data, op, operation, detach)
        if as_dict is not None:
            return as_dict
    leaves, paths, spec = flatten(data)
    order = sorted(range(len(leaves)), key=paths.__getitem__)
    leaves, paths = [leaves[i] for i in order], [paths[i] for i in order]
    kind = _one_number_kind(context, leaves)
    leaves, exact, widened = agree_on_leaves(context, leaves, paths, op, operation)
    if kind is not None and not exact and not widened:  # every rank has numbers of this one kind
        reduced = _reduce_numbers(context, leaves, op)
    else:
        reduced = reduce_leaves(context, leaves, paths, op, exact=exact, operation=operation, detach=detach)
    results: list[Any] = [None] * len(order)
    for position, value in zip(order, reduced):
        results[position] = value
    return unflatten(spec, results)


def reduce_tensor_dict(context: WireContext, data: dict[Any, Any], op: ReduceOp, operation: str, detach: bool) -> dict[Any, Any] | None:
    """The common case, vectorised: a plain dict of tensors of one dtype on one device, reduced
    as they are. ``None`` when ``data`` is anything else (the general path takes it).

    It agrees on exactly the layout the general path would claim and keeps its leaf order,
    so ranks that take different paths still meet in the same agreement and collective.
    """
    values = list(data.values())
    if not values or type(values[0]) is not torch.Tensor:
        return None
    first = values[0]
    dtype, device, shape, on_cpu = first.dtype, first.device, first.shape, first.is_cpu
    alike = True  # every tensor of one shape: one stack, one unbind
    lazy = dtype.is_complex  # only a complex tensor can be lazily conjugated
    for value in values:  # the hottest loop of a dict: one line of tests per value
        if type(value) is not torch.Tensor or value.dtype is not dtype or ((not value.is_cpu) if on_cpu else value.device != device):
            return None
        if not detach and (not value.is_contiguous() or value.is_neg() or lazy and value.is_conj()):
            return None  # filled in place through a view: the general path does it (reading, a stack resolves views)
        if alike and value.shape != shape:
            alike = False
    if not context.accepts(device):
        return None
    try:
        plan = cached_plan(first, first, op, operation)
    except InvalidArgumentError:
        return None  # refused: the general path says so on every rank, after agreeing
    if plan.transport_dtype is not dtype or plan.mean_dtype not in (None, dtype):
        return None
    if context.world_size == 1:  # no other rank to match: the caller's order serves
        keys, ordered = list(data), values
    else:
        keys, claim, header = _dict_layout(data, values, op, operation, shape if alike else None)
        ordered = [data[key] for key in keys]
    with torch.no_grad():
        if alike:  # one stack, and one unbind back
            flat = torch.stack(ordered)
        else:
            flat = _flatten_dense_tensors(ordered)  # type: ignore[no-untyped-call]
            if len(ordered) == 1 and detach:
                flat = flat.clone()  # a lone tensor comes back as a view of itself: leave the input alone
        if context.world_size > 1:  # over one rank a reduction is the identity: no collective to wait for
            agree(context, operation, claim, header)
            context.backend.all_reduce(flat, plan.op)
        if plan.mean_dtype is not None:
            flat.div_(context.world_size)
        views = list(flat.unbind(0)) if alike else _views(flat, ordered)
        if not detach:
            torch._foreach_copy_(ordered, views)
            return dict(data)
    reduced = dict(zip(keys, views))
    return reduced if context.world_size == 1 else {key: reduced[key] for key in data}


_DICT_LAYOUTS: dict[tuple[Any, ...], tuple[list[Any], Claim, bytes]] = {}


def _dict_layout(
    data: dict[Any, Any], values: list[torch.Tensor], op: ReduceOp, operation: str, shape: torch.Size | None
) -> tuple[list[Any], Claim, bytes]:
    """A plain dict of tensors' keys in the order every rank shares, its claim and the claim's
    header: made once for each dict seen (its keys, dtype, device and shapes: ``shape`` when every
    value has it), then remembered."""
    first = values[0]
    shapes = shape if shape is not None else tuple(v.shape for v in values)
    # Key types too: 1, 1.0 and True are equal dict keys, but their key paths differ.
    key = (operation, op, first.dtype, first.device.type, tuple(data), tuple(map(type, data)), shapes)
    known = _DICT_LAYOUTS.get(key)
    if known is None:
        paths = {k: f"[{k!r}]" for k in data}
        keys = sorted(data, key=paths.__getitem__)
        entries = ((paths[k], ("tensor", first.dtype, data[k].shape, first.device.type)) for k in keys)
        claim = Claim((("(op)", f"{operation} {op.value}"), *entries), (_NO_NUMBERS, 0))
        known = (keys, claim, claim_header(claim))
        if len(_DICT_LAYOUTS) < 1024:
            _DICT_LAYOUTS[key] = known
    return known


_NO_NUMBERS = digest64(b"")
"""The digest of the number kinds of a call that has no Python numbers."""


def agree_on_leaves(
    context: WireContext, leaves: list[Any], paths: list[str], op: ReduceOp, operation: str
) -> tuple[list[Any], bool, bool]:
    """Check the leaves, agree on their layout with the other ranks, and widen Python
    numbers to the kind every rank can share. Returns the leaves, whether Python numbers
    must be reduced exactly (an int result could leave int64), and whether the ranks' number
    kinds differed (then some widened theirs): the same two answers on every rank."""
    alone = context.world_size == 1  # nothing to agree with: only check the leaves
    layout: list[tuple[str, Any]] = [("(op)", f"{operation} {op.value}")]
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
            if isinstance(leaf, torch.Tensor) and (leaf.is_meta or not leaf.is_contiguous()):
                check_fillable(tensor, operation, path)
        except InvalidArgumentError as error:
            problem = problem or error
            layout.append((path, "invalid"))
            continue
        if alone:
            continue
        layout.append((path, _leaf_layout(context, leaf, tensor)))
    if alone:
        if problem is not None:
            raise problem
        return leaves, needs_exact(op, [bits], 1), False
    claim = Claim(tuple(layout), (digest64(bytes(kinds)), bits), str(problem) if problem else None)
    table = agree(context, operation, claim)
    widened = bool((table[:, 0] != table[0, 0]).any())
    if widened:
        widest = [max(column) for column in zip(*_every_ranks_kinds(context, bytes(kinds), operation))]
        wider = iter(PYTHON_KINDS[code] for code in widest)
        leaves = [promote(leaf, next(wider)) if type(leaf) in KIND_CODES else leaf for leaf in leaves]
    return leaves, needs_exact(op, table[:, 1].tolist(), context.world_size), widened


def _every_ranks_kinds(context: WireContext, kinds: bytes, operation: str) -> list[bytes]:
    """Every rank's number kinds (one code a number leaf), checked: the layouts agreed, so each
    must be as long as this rank's, with codes this version knows."""
    every = all_gather_objects(context, kinds, operation)
    for rank, theirs in enumerate(every):
        if not (isinstance(theirs, bytes) and len(theirs) == len(kinds) and all(c < len(PYTHON_KINDS) for c in theirs)):
            raise WireFormatError(f"{operation}: rank {rank} sent number kinds {theirs!r:.80} that do not fit the agreed layout")
    return every


def _one_number_kind(context: WireContext, leaves: list[Any]) -> type | None:
    """``float`` or ``int`` when the leaves are Python numbers all of that kind (ints within
    int64), which travel as one tensor; else ``None``."""
    if context.world_size == 1 or not leaves:
        return None
    kind = type(leaves[0])
    if kind not in (float, int) or any(type(leaf) is not kind for leaf in leaves):
        return None
    if kind is int and not all(fits_int64(leaf) for leaf in leaves):
        return None
    return kind


def _reduce_numbers(context: WireContext, leaves: list[Any], op: ReduceOp) -> list[Any]:
    """Python numbers of one kind reduced as one tensor, with the result kinds the general path gives."""
    plan = cached_plan(leaves[0], PYTHON_PROTOTYPES[type(leaves[0])], op, "all_reduce")
    flat = torch.tensor(leaves, dtype=PYTHON_PROTOTYPES[type(leaves[0])].dtype, device=context.device)
    context.backend.all_reduce(flat, plan.op)
    if plan.mean_dtype is not None:
        flat = flat.to(plan.mean_dtype).div_(context.world_size)
    return flat.tolist()


def _leaf_layout(context: WireContext, leaf: Any, tensor: torch.Tensor) -> tuple[Any, ...]:
    """What must match across ranks for one non-number leaf: its kind, dtype, shape and transport
    device (shown in words only when ranks differ, by :func:`distcomm.wire.mismatch.explain`)."""
    if isinstance(leaf, torch.Tensor):
        device = tensor.device if context.accepts(tensor.device) else context.device
        return ("tensor", tensor.dtype, tensor.shape, device.type)
    return ("numpy scalar" if isinstance(leaf, np.generic) else "numpy", tensor.dtype, tensor.shape)


def reduce_leaves(
    context: WireContext,
    leaves: list[Any],
    paths: list[str],
    op: ReduceOp,
    *,
    exact: bool = False,
    operation: str = "all_reduce",
    detach: bool = False,
) -> list[Any]:
    """Reduce many leaves with one collective per transport dtype and device.

    Each group becomes one flat buffer in one vectorised call, is reduced once, and is
    copied back in one vectorised call; results that go back to the host (numbers,
    NumPy values) cross from the device once per group. With ``exact``, Python numbers
    are instead gathered and reduced as Python numbers.
    """
    tensors: list[torch.Tensor | None] = []
    plans: list[ReducePlan] = []
    groups: dict[tuple[torch.dtype, ReduceOp, torch.device], list[int]] = {}
    numbers: list[int] = []
    seen: dict[tuple[Any, ...], tuple[ReducePlan, tuple[torch.dtype, ReduceOp, torch.device], list[int]]] = {}
    for i, (leaf, path) in enumerate(zip(leaves, paths)):
        kind = type(leaf)
        key: tuple[Any, ...]
        if kind in PYTHON_PROTOTYPES:
            tensor, prototype, key = None, PYTHON_PROTOTYPES[kind], (kind,)
        else:
            tensor = prototype = leaf if kind is torch.Tensor else to_tensor(leaf, operation, path)
            key = (kind, tensor.dtype, tensor.device)
        entry = seen.get(key)  # leaves of one kind, dtype and device share a plan and a group
        if entry is None:
            plan = cached_plan(leaf, prototype, op, operation)
            device = context.device if tensor is None or not context.accepts(tensor.device) else tensor.device
            entry = seen[key] = (plan, (plan.transport_dtype, plan.op, device), [])
        tensors.append(tensor)
        plans.append(entry[0])
        if exact and tensor is None:
            numbers.append(i)
        else:
            entry[2].append(i)
    for _, group, members in seen.values():
        if members:
            groups.setdefault(group, []).extend(members)
    results: list[Any] = [None] * len(leaves)
    if numbers:
        every = all_gather_objects(context, [leaves[i] for i in numbers], operation)
        for rank, theirs in enumerate(every):
            if not (type(theirs) is list and len(theirs) == len(numbers) and all(type(v) in KIND_CODES for v in theirs)):
                raise WireFormatError(f"{operation}: rank {rank} sent numbers {theirs!r:.80} that do not fit the agreed layout")
        columns = list(zip(*every))
        for i, value in zip(numbers, reduce_exactly(columns, op, context.world_size)):
            results[i] = value
    with torch.no_grad():  # collectives are not differentiable; leaves that require grad are filled in place
        for (dtype, group_op, device), members in groups.items():
            members.sort()  # leaf order, the same on every rank
            _reduce_group(context, dtype, group_op, device, [leaves[i] for i in members],
                          [tensors[i] for i in members], [plans[i] for i in members], detach, results, members)  # fmt: skip
    return results


def _reduce_group(
    context: WireContext,
    dtype: torch.dtype,
    op: ReduceOp,
    device: torch.device,
    leaves: list[Any],
    tensors: list[torch.Tensor | None],
    plans: list[ReducePlan],
    detach: bool,
    results: list[Any],
    positions: list[int],
) -> None:
    """One flat buffer, one collective, one copy back, for leaves that travel alike."""
    if all(t is None for t in tensors):  # Python numbers only: one tensor from the list, one read back
        flat = torch.tensor(leaves, dtype=dtype, device=device)
        context.backend.all_reduce(flat, op)
        if plans[0].mean_dtype is not None:
            flat = flat.to(plans[0].mean_dtype).div_(context.world_size)
        for i, value in zip(positions, flat.tolist()):
            results[i] = value
        return
    parts = [t if t is not None else to_tensor(leaf, "all_reduce") for leaf, t in zip(leaves, tensors)]
    in_place = all(t.dtype is dtype and t.device == device for t in parts)
    if in_place:
        flat = _flatten_dense_tensors(parts)  # type: ignore[no-untyped-call]  # one vectorised copy
        if len(parts) == 1 and (detach or not is_plain(flat)):
            flat = flat.clone()  # a lone part comes back as a view of itself: leave the input alone, or resolve it
    else:
        flat = torch.cat([t.reshape(-1).to(device=device, dtype=dtype) for t in parts])
    context.backend.all_reduce(flat, op)
    plan = plans[0]
    if in_place and all(p is plan for p in plans) and plan.mean_dtype in (None, dtype):
        if plan.mean_dtype is not None:
            flat.div_(context.world_size)
        _write_back(leaves, parts, flat, detach, results, positions)
        return
    host = flat if flat.device.type == "cpu" else None
    offset = 0
    for i, leaf, part, leaf_plan in zip(positions, leaves, parts, plans):
        is_tensor = isinstance(leaf, torch.Tensor)
        if not is_tensor and host is None:
            host = flat.cpu()  # one copy to the host for the whole group
        source = flat if is_tensor else host
        reduced = source[offset : offset + part.numel()].view(part.shape)  # type: ignore[index]
        offset += part.numel()
        if leaf_plan.mean_dtype is not None:
            reduced = reduced.to(leaf_plan.mean_dtype).div_(context.world_size)
        if not is_tensor:
            results[i] = from_tensor(reduced, leaf)
        elif detach or reduced.dtype != leaf.dtype:
            results[i] = reduced.to(leaf.device)  # new (flat is a fresh buffer); a mean of integers is a float tensor
        else:
            leaf.copy_(reduced)
            results[i] = leaf


def _write_back(
    leaves: list[Any], parts: list[torch.Tensor], flat: torch.Tensor, detach: bool, results: list[Any], positions: list[int]
) -> None:
    """Give each leaf its part of the reduced ``flat`` (of the leaves' dtype and device): tensors in
    place in one vectorised copy (or, with ``detach``, new views), host values from one host copy."""
    views = _views(flat, parts)
    tensors = [(i, leaf, view) for i, leaf, view in zip(positions, leaves, views) if isinstance(leaf, torch.Tensor)]
    if len(tensors) < len(leaves):
        host_views = views if flat.device.type == "cpu" else _views(flat.cpu(), parts)
        for i, leaf, view in zip(positions, leaves, host_views):
            if not isinstance(leaf, torch.Tensor):
                results[i] = from_tensor(view, leaf)
    if not detach and tensors:
        plain = [(leaf, view) for _, leaf, view in tensors if not (leaf.is_conj() or leaf.is_neg())]
        if plain:
            torch._foreach_copy_([leaf for leaf, _ in plain], [view for _, view in plain])
        for _, leaf, view in tensors:
            if leaf.is_conj() or leaf.is_neg():  # a lazy view is filled through itself (foreach refuses it)
                leaf.copy_(view)
    for i, leaf, view in tensors:
        results[i] = view if detach else leaf


def _views(flat: torch.Tensor, parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """``flat`` cut into views shaped like ``parts`` (one ``unbind`` when they all share a shape)."""
    shape = parts[0].shape
    if all(p.shape == shape for p in parts):
        return list(flat.view(len(parts), *shape).unbind(0))
    return _unflatten_dense_tensors(flat, parts)  # type: ignore[no-untyped-call,no-any-return]


def reduce_data(context: WireContext, data: Any, op: ReduceOp, operation: str = "all_reduce") -> Any:
    """``data`` reduced over every rank with the rules of ``all_reduce``: a lone tensor as it is,
    anything else after agreeing on its layout; over one rank a number is decided locally."""
    alone = reduce_if_alone(data, op, context.world_size)
    if alone is not NOT_ALONE:
        return alone
    if isinstance(data, torch.Tensor):
        return reduce_tensor(context, data, op)
    return reduce_structure(context, data, op, operation)


def start_all_reduce(context: WireContext, tensor: Any, op: ReduceOp) -> Handle:
    """An in-place reduction of ``tensor`` in the background where the backend can do it as it is;
    else done at once (a copy to another device, a dtype it converts, a mean that divides)."""
    if not isinstance(tensor, torch.Tensor) or not context.accepts(tensor.device) or not is_plain(tensor):
        return CompletedHandle(reduce_data(context, tensor, op))
    plan = plan_reduction(tensor, tensor, op, "all_reduce_async")
    if plan.transport_dtype != tensor.dtype or plan.mean_dtype is not None:
        return CompletedHandle(reduce_tensor(context, tensor, op))
    return context.backend.all_reduce_async(tensor, plan.op)


def reduce_to(context: WireContext, data: Any, dst: int, op: ReduceOp) -> Any:
    """The reduction of every rank's ``data`` on ``dst`` (tensors there filled in place), ``None``
    elsewhere, where the data is left as it was. Ranks agree on the layout, ``dst`` and ``op`` first."""
    alone = reduce_if_alone(data, op, context.world_size)
    if alone is not NOT_ALONE:
        return alone
    if context.rank != dst:  # the reduction fills tensors in place: fill plain copies here
        data = map_leaves(lambda leaf: leaf.detach().clone() if isinstance(leaf, torch.Tensor) else leaf, data)
    result = reduce_structure(context, data, op, f"reduce to {dst}")
    return result if context.rank == dst else None
