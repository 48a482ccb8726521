"""Reductions of tensors, numbers, arrays and nested data, over any backend.

The rules (what each leaf travels as, how kinds combine) live in
:mod:`distcomm.reduction`; this module carries them out: a lone tensor on the hot path,
and everything else as agree on the layout, one collective per transport dtype and
device, and rebuild the caller's structure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distcomm.agreement import Claim, agree, digest64
from distcomm.conversion import check_transportable, describe, from_tensor, to_tensor
from distcomm.errors import InvalidArgumentError
from distcomm.nested import flatten, unflatten
from distcomm.objects import all_gather_objects
from distcomm.ops import ReduceOp
from distcomm.reduction import (
    KIND_CODES,
    PYTHON_KINDS,
    PYTHON_PROTOTYPES,
    ReducePlan,
    int_bits,
    needs_exact,
    plan_reduction,
    promote,
    reduce_exactly,
)

if TYPE_CHECKING:
    from distcomm.communicator import Communicator


def reduce_tensor(comm: Communicator, tensor: torch.Tensor, op: ReduceOp) -> torch.Tensor:
    """The hot path: one tensor, no flattening; in place unless its dtype cannot hold the result."""
    plan = plan_reduction(tensor, tensor, op, "all_reduce")
    if plan.transport_dtype != tensor.dtype or plan.mean_dtype not in (None, tensor.dtype):
        return reduce_leaves(comm, [tensor], [""], op)[0]  # type: ignore[no-any-return]
    carrier = comm._transport(tensor, "all_reduce")
    comm.tensor_backend.all_reduce(carrier, plan.op)
    if plan.mean_dtype is not None or carrier is not tensor:
        with torch.no_grad():  # in place even on a tensor that requires grad, as torch's collectives are
            if plan.mean_dtype is not None:
                carrier.div_(comm.world_size)
            if carrier is not tensor:
                tensor.copy_(carrier)
    return tensor


def reduce_structure(comm: Communicator, data: Any, op: ReduceOp, operation: str, *, detach: bool = False) -> Any:
    """Reduce numbers, arrays and nested data: agree on the layout, then reduce the leaves
    in an order every rank shares (sorted by key path), and rebuild the caller's structure."""
    leaves, paths, spec = flatten(data)
    order = sorted(range(len(leaves)), key=paths.__getitem__)
    leaves, paths = [leaves[i] for i in order], [paths[i] for i in order]
    if detach:
        leaves = [leaf.detach().clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
    leaves, exact = agree_on_leaves(comm, leaves, paths, op, operation)
    reduced = reduce_leaves(comm, leaves, paths, op, exact=exact, operation=operation)
    results: list[Any] = [None] * len(order)
    for position, value in zip(order, reduced):
        results[position] = value
    return unflatten(spec, results)


def agree_on_leaves(comm: Communicator, leaves: list[Any], paths: list[str], op: ReduceOp, operation: str) -> tuple[list[Any], bool]:
    """Check the leaves, agree on their layout with the other ranks, and widen Python
    numbers to the kind every rank can share. Returns the leaves and whether Python
    numbers must be reduced exactly (an int result could leave int64)."""
    layout = [("(op)", f"{operation} {op.value}")]
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
            if isinstance(leaf, torch.Tensor):
                check_transportable(tensor, operation, path)
        except InvalidArgumentError as error:
            problem = problem or error
            layout.append((path, "invalid"))
            continue
        layout.append((path, _leaf_layout(comm, leaf, tensor)))
    if comm.world_size == 1:
        if problem is not None:
            raise problem
        return leaves, needs_exact(op, [bits], 1)
    claim = Claim(tuple(layout), (digest64(bytes(kinds)), bits), str(problem) if problem else None)
    table = agree(comm, operation, claim)
    if (table[:, 0] != table[0, 0]).any():
        widest = [max(column) for column in zip(*all_gather_objects(comm, bytes(kinds), operation))]
        wider = iter(PYTHON_KINDS[code] for code in widest)
        leaves = [promote(leaf, next(wider)) if type(leaf) in KIND_CODES else leaf for leaf in leaves]
    return leaves, needs_exact(op, table[:, 1].tolist(), comm.world_size)


def _leaf_layout(comm: Communicator, leaf: Any, tensor: torch.Tensor) -> str:
    """What must match across ranks for one non-number leaf: its kind, dtype, shape and transport device."""
    if isinstance(leaf, torch.Tensor):
        device = tensor.device if comm.tensor_backend.accepts(tensor.device) else comm.device
        return f"tensor {describe(tensor)} on {device.type}"
    return f"numpy {'scalar ' if isinstance(leaf, np.generic) else ''}{describe(tensor)}"


def reduce_leaves(
    comm: Communicator, leaves: list[Any], paths: list[str], op: ReduceOp, *, exact: bool = False, operation: str = "all_reduce"
) -> list[Any]:
    """Reduce many leaves with one collective per transport dtype and device.

    Python numbers skip per-leaf tensors: each group of them becomes one tensor in
    one call, which is what makes a dict of fifty metrics cost one collective. With
    ``exact``, Python numbers are instead gathered and reduced as Python numbers.
    """
    backend = comm.tensor_backend
    tensors: list[torch.Tensor | None] = []
    plans: list[ReducePlan] = []
    groups: dict[tuple[torch.dtype, ReduceOp, torch.device], list[int]] = {}
    numbers: list[int] = []
    for i, (leaf, path) in enumerate(zip(leaves, paths)):
        if type(leaf) in PYTHON_PROTOTYPES:
            tensor, prototype = None, PYTHON_PROTOTYPES[type(leaf)]
            device = comm.device
        else:
            tensor = prototype = to_tensor(leaf, operation, path)
            device = tensor.device if backend.accepts(tensor.device) else comm.device
        plan = plan_reduction(leaf, prototype, op, operation)
        tensors.append(tensor)
        plans.append(plan)
        if exact and tensor is None:
            numbers.append(i)
        else:
            groups.setdefault((plan.transport_dtype, plan.op, device), []).append(i)
    results: list[Any] = [None] * len(leaves)
    if numbers:
        columns = list(zip(*all_gather_objects(comm, [leaves[i] for i in numbers], operation)))
        for i, value in zip(numbers, reduce_exactly(columns, op, comm.world_size)):
            results[i] = value
    for (dtype, group_op, device), members in groups.items():
        if all(tensors[i] is None for i in members):  # Python numbers only
            flat = torch.tensor([leaves[i] for i in members], dtype=dtype, device=device)
            backend.all_reduce(flat, group_op)
            mean_dtype = plans[members[0]].mean_dtype
            if mean_dtype is not None:
                flat = flat.to(mean_dtype).div_(comm.world_size)
            for i, value in zip(members, flat.tolist()):
                results[i] = value
            continue
        parts = [tensors[i] if tensors[i] is not None else to_tensor(leaves[i], operation) for i in members]
        with torch.no_grad():  # collectives are not differentiable; leaves that require grad are filled in place
            flat = torch.cat([t.reshape(-1).to(device=device, dtype=dtype) for t in parts])  # type: ignore[union-attr]
            backend.all_reduce(flat, group_op)
            for i, t, part in zip(members, parts, flat.split([t.numel() for t in parts])):  # type: ignore[union-attr,no-untyped-call]
                results[i] = _finish_leaf(comm, leaves[i], part.view(t.shape), plans[i])  # type: ignore[union-attr]
    return results


def _finish_leaf(comm: Communicator, leaf: Any, reduced: torch.Tensor, plan: ReducePlan) -> Any:
    if plan.mean_dtype is not None:
        reduced = reduced.to(plan.mean_dtype).div_(comm.world_size)
        if isinstance(leaf, torch.Tensor) and reduced.dtype != leaf.dtype:
            return reduced.to(leaf.device)  # a mean of integers: a new float tensor
    if isinstance(leaf, torch.Tensor):
        leaf.copy_(reduced)
        return leaf
    return from_tensor(reduced, leaf)
