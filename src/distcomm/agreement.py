"""Ranks agree on the layout of a call before any data moves.

Where distcomm chooses the wire format (Python numbers, NumPy values, nested data, the
mode of a broadcast, the members of a split), ranks that pass different things must
not exchange bytes that the others read as something else. Each rank first sends a
small fixed header: whether it can take part, a digest of its call's layout, and a few
numbers that every rank needs to see (integer sizes, a digest of number kinds). Equal
headers cost one small collective. Any difference makes every rank raise the same
:class:`~distcomm.InconsistentInputError`, which names the first difference and the
ranks; only then are the full layouts exchanged, to write that message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from distcomm.errors import InconsistentInputError

if TYPE_CHECKING:
    from distcomm.communicator import Communicator

Layout = tuple[tuple[str, Any], ...]
"""``(path, description)`` pairs in an order every rank shares (sorted by path). A description
is a string, or a tuple ``(kind, dtype, shape[, device type])`` that :func:`show` puts in words."""

_OK, _REFUSED = 0, 1


def digest64(data: bytes) -> int:
    """A signed 64-bit digest of ``data`` (it travels in an int64 header word)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


@attrs.frozen
class Claim:
    """What one rank says about its part in a call.

    ``layout`` must be equal on every rank; ``numbers`` (int64 each) are shown to every
    rank; ``problem`` is why this rank cannot take part (then every rank raises).
    """

    layout: Layout
    numbers: tuple[int, ...] = ()
    problem: str | None = None


INLINE_WORLD_MAX = 16
"""Up to this world size, the header travels in a fixed slot with room for a small payload."""
INLINE_SLOT_BYTES = 4096
"""The slot's size (header included); every rank of a call sends the same size, inline data or not."""


def agree(comm: Communicator, operation: str, claim: Claim) -> np.ndarray:
    """Every rank's ``claim.numbers``, one row per rank, once every layout matches.

    Raises :class:`~distcomm.InconsistentInputError` on every rank when some rank has a
    problem or the layouts differ.
    """
    return agree_with_data(comm, operation, claim, None)[0]


def agree_with_data(comm: Communicator, operation: str, claim: Claim, data: torch.Tensor | None) -> tuple[np.ndarray, torch.Tensor | None]:
    """:func:`agree`, carrying ``data`` (a small flat tensor on ``comm.device``) in the same collective.

    Returns every rank's numbers and, when every rank sent data (so every rank made the
    same kind of call), every rank's data as a ``(world_size, n)`` tensor; else ``None``,
    and every rank goes on with its data as if it had sent none. The slot has one size
    for every call of a world, so ranks that send data and ranks that do not still meet.
    """
    words = 4 + len(claim.numbers)
    header_bytes = -(-8 * words // 16) * 16  # a multiple of 16: any dtype's view of the data is aligned
    inline = comm.world_size <= INLINE_WORLD_MAX
    slot_bytes = max(INLINE_SLOT_BYTES, header_bytes) if inline else header_bytes
    fits = data is not None and inline and header_bytes + data.numel() * data.element_size() <= slot_bytes
    header = np.zeros(header_bytes // 8, dtype="<i8")
    header[0] = _REFUSED if claim.problem else _OK
    header[1] = digest64(repr(claim.layout).encode())
    header[2] = len(claim.layout)
    header[3] = data.numel() * data.element_size() if fits else -1  # type: ignore[union-attr]
    header[4:words] = claim.numbers
    slot = torch.empty(slot_bytes, dtype=torch.uint8, device=comm.device)
    slot[:header_bytes] = torch.from_numpy(header.view(np.uint8)).to(comm.device)
    if fits:
        flat = data.reshape(-1).view(torch.uint8)  # type: ignore[union-attr]
        slot[header_bytes : header_bytes + flat.numel()] = flat
    rows = comm.tensor_backend.all_gather(slot)
    table = rows[:, :header_bytes].cpu().numpy().view("<i8")
    if not table[:, 0].any() and (table[:, 1:3] == table[0, 1:3]).all():
        sizes = table[:, 3]
        if fits and (sizes == sizes[0]).all():
            gathered = rows[:, header_bytes : header_bytes + int(sizes[0])].view(data.dtype)  # type: ignore[union-attr]
            return table[:, 4:words], gathered
        return table[:, 4:words], None
    from distcomm.objects import all_gather_objects  # objects builds on this module

    claims = all_gather_objects(comm, (claim.problem, claim.layout), operation)
    raise InconsistentInputError(explain(operation, claims))


def explain(operation: str, claims: Sequence[tuple[str | None, Layout]]) -> str:
    """The message every rank raises: each rank's problem, or the first difference in layout."""
    problems = [f"rank {rank} cannot take part: {problem}" for rank, (problem, _) in enumerate(claims) if problem]
    if problems:
        return f"{operation}: " + "; ".join(problems)
    layouts = [dict(layout) for _, layout in claims]
    for path in sorted(set().union(*layouts)):
        seen = [show(layout.get(path, "nothing")) for layout in layouts]
        if len(set(seen)) > 1:
            where = path or "the top level"
            return f"{operation}: ranks passed inputs that do not match; first difference at {where}: {by_rank(seen)}"
    return f"{operation}: ranks passed inputs that do not match"


def show(description: Any) -> str:
    """A layout description in words: ``tensor float32[2, 3] on cpu``."""
    if not isinstance(description, tuple):
        return str(description)
    kind, dtype, shape, *device = description
    text = f"{kind} {str(dtype).removeprefix('torch.')}{list(shape)}"
    return f"{text} on {device[0]}" if device else text


def by_rank(values: Sequence[str]) -> str:
    """``rank 0: float; ranks 1, 2: str``: each distinct value with the ranks that have it."""
    ranks: dict[str, list[int]] = {}
    for rank, value in enumerate(values):
        ranks.setdefault(value, []).append(rank)
    parts = []
    for value, members in ranks.items():
        label = "rank" if len(members) == 1 else "ranks"
        parts.append(f"{label} {', '.join(map(str, members))}: {value}")
    return "; ".join(parts)
