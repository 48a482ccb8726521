"""Gathers: every rank's tensor (of any shape), number or nested data, on every rank.

The wire format of a tensor gather: each rank sends one fixed-size slot holding a
header (number of dimensions, dtype code, shape) and, when the tensor is small, the
tensor's bytes too. Small tensors therefore take one collective; larger ones take the
headers and then the data (padded on backends that cannot gather uneven sizes). A
rank that cannot take part (a dtype or number of dimensions no header can describe)
says so in its header, and every rank raises the same error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distcomm.agreement import explain
from distcomm.conversion import describe
from distcomm.errors import InconsistentInputError, InvalidArgumentError
from distcomm.handles import CompletedHandle, Handle, ThenHandle
from distcomm.nested import flatten, is_container, unflatten
from distcomm.objects import OBJECT_SLOT_BYTES, all_gather_objects
from distcomm.rules import DTYPE_CODES, DTYPES

if TYPE_CHECKING:
    from distcomm.communicator import Communicator

MAX_GATHER_DIMS = 16
HEADER_WORDS = 2 + MAX_GATHER_DIMS
INLINE_BYTES = OBJECT_SLOT_BYTES - 8 * HEADER_WORDS
"""Tensors up to this size travel inside their header's slot: one collective."""


def gather_data(comm: Communicator, data: Any) -> list[Any]:
    """Every rank's ``data``: tensors of any shape, other values through pickle, containers leaf by leaf."""
    if isinstance(data, torch.Tensor):
        return gather_tensor(comm, data, asynchronous=False).wait()  # type: ignore[no-any-return]
    if not is_container(data):
        return all_gather_objects(comm, data, "all_gather")
    leaves, _, spec = flatten(data)
    skeleton = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
    per_rank = all_gather_objects(comm, (spec, skeleton), "all_gather")
    if any(rank_spec != spec for rank_spec, _ in per_rank):
        raise InconsistentInputError(
            "all_gather: ranks passed differently shaped structures: "
            + "; ".join(f"rank {r}: {s}" for r, (s, _) in enumerate(per_rank))
        )
    columns = {
        i: gather_tensor(comm, leaf, asynchronous=False).wait() for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)
    }
    return [
        unflatten(spec, [columns[i][r] if i in columns else v for i, v in enumerate(rank_leaves)])
        for r, (_, rank_leaves) in enumerate(per_rank)
    ]


def gather_same_shape(comm: Communicator, tensor: Any, operation: str, out: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Every rank's ``tensor``, promised to have one shape and dtype everywhere: one collective,
    into ``out`` when given (then the entries are views of it)."""
    carrier = _same_shape_carrier(comm, tensor, operation, out)
    if comm.world_size == 1:  # the only rank's tensor: a copy, with no collective to wait for
        return [tensor.clone() if out is None else out[0].copy_(tensor)]
    gathered = comm.tensor_backend.all_gather(carrier, out)
    return list((gathered if carrier is tensor else gathered.to(tensor.device)).unbind(0))


def gather_same_shape_async(comm: Communicator, tensor: torch.Tensor, out: torch.Tensor | None = None) -> Handle:
    """:func:`gather_same_shape` in the background."""
    carrier = _same_shape_carrier(comm, tensor, "all_gather_async", out)
    home = tensor.device
    return ThenHandle(comm.tensor_backend.all_gather_async(carrier, out), lambda gathered: list(gathered.to(home).unbind(0)))


def _same_shape_carrier(comm: Communicator, tensor: Any, operation: str, out: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise InvalidArgumentError(f"{operation}(same_shape=True) takes a tensor, got {describe(tensor)}")
    if tensor.dtype not in DTYPE_CODES:
        raise InvalidArgumentError(f"{operation} does not support dtype {tensor.dtype}; convert the tensor first")
    carrier = comm._transport(tensor, operation)
    if out is not None:
        wanted = (comm.world_size, *tensor.shape)
        if (
            not isinstance(out, torch.Tensor) or tuple(out.shape) != wanted or out.dtype != tensor.dtype
            or out.device != carrier.device or not out.is_contiguous() or carrier is not tensor
        ):  # fmt: skip
            raise InvalidArgumentError(
                f"{operation}: out must be a contiguous {str(tensor.dtype).removeprefix('torch.')}{list(wanted)} "
                f"tensor on {tensor.device} (world size first, then the input's shape), for an input the backend "
                f"takes where it is; got {describe(out)}"
            )
    return carrier


def gather_tensor(comm: Communicator, tensor: torch.Tensor, *, asynchronous: bool) -> Handle:
    """Gather tensors of any shapes: one collective when every rank's tensor is small, else
    the headers then the data, which moves asynchronously when asked and shapes are equal.
    The handle's result is a list of new tensors on ``tensor``'s device."""
    backend = comm.tensor_backend
    carrier = comm._transport(tensor, "all_gather")
    inline, shapes = exchange_headers(comm, carrier)
    home = tensor.device
    if inline is not None:
        return CompletedHandle([t.to(home) for t in inline])
    if all(s == shapes[0] for s in shapes):
        if asynchronous:
            return ThenHandle(backend.all_gather_async(carrier), lambda out: [row.to(home) for row in out.unbind(0)])
        gathered = list(backend.all_gather(carrier).unbind(0))
    else:
        gathered = backend.all_gather_uneven(carrier, shapes)
    return CompletedHandle(gathered if carrier is tensor else [g.to(home) for g in gathered])


def exchange_headers(comm: Communicator, tensor: torch.Tensor) -> tuple[list[torch.Tensor] | None, list[torch.Size]]:
    """Every rank's shape, and every rank's tensor too when all of them fit in a slot.

    Different dtypes or numbers of dimensions, or a refusal, raise the same clear error
    on every rank, since every rank sees every header.
    """
    problem = None
    code = DTYPE_CODES.get(tensor.dtype)
    if code is None:
        problem = f"all_gather does not support dtype {tensor.dtype}; convert the tensor first"
    elif tensor.dim() > MAX_GATHER_DIMS:
        problem = f"all_gather takes at most {MAX_GATHER_DIMS} dimensions, got {tensor.dim()}"
    header = np.full(HEADER_WORDS, -1, dtype="<i8")
    nbytes = tensor.numel() * tensor.element_size()
    slot = torch.zeros(OBJECT_SLOT_BYTES, dtype=torch.uint8, device=tensor.device)
    if problem is None:
        header[0], header[1] = tensor.dim(), code
        header[2 : 2 + tensor.dim()] = tensor.shape
        if nbytes <= INLINE_BYTES:
            slot[header.nbytes : header.nbytes + nbytes] = tensor.reshape(-1).view(torch.uint8)
    slot[: header.nbytes] = torch.from_numpy(header.view(np.uint8)).to(tensor.device)
    slots = comm.tensor_backend.all_gather(slot)
    headers = slots[:, : header.nbytes].cpu().numpy().view("<i8")
    if any(h[0] < 0 or not 0 <= h[1] < len(DTYPES) or h[0] > MAX_GATHER_DIMS for h in headers):
        claims = all_gather_objects(comm, (problem, ()), "all_gather")
        raise InconsistentInputError(explain("all_gather", claims))
    shapes = [torch.Size(h[2 : 2 + int(h[0])].tolist()) for h in headers]
    dtypes = [DTYPES[int(h[1])] for h in headers]
    if len(set(dtypes)) > 1 or len({len(s) for s in shapes}) > 1:
        listing = "; ".join(
            f"rank {r}: {str(d).removeprefix('torch.')}{list(s)}" for r, (d, s) in enumerate(zip(dtypes, shapes))
        )
        raise InconsistentInputError(
            f"all_gather: every rank must pass the same dtype and number of dimensions ({listing}); "
            "convert with .to(dtype) or reshape before gathering"
        )
    sizes = [shape.numel() * tensor.element_size() for shape in shapes]
    if max(sizes) > INLINE_BYTES:
        return None, shapes
    start = header.nbytes
    inline = [s[start : start + n].view(tensor.dtype).reshape(shape).clone() for s, n, shape in zip(slots, sizes, shapes)]
    return inline, shapes
