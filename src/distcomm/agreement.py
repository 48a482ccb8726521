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


def agree(comm: Communicator, operation: str, claim: Claim) -> np.ndarray:
    """Every rank's ``claim.numbers``, one row per rank, once every layout matches.

    Raises :class:`~distcomm.InconsistentInputError` on every rank when some rank has a
    problem or the layouts differ.
    """
    header = np.empty(3 + len(claim.numbers), dtype="<i8")
    header[0] = _REFUSED if claim.problem else _OK
    header[1] = digest64(repr(claim.layout).encode())
    header[2] = len(claim.layout)
    header[3:] = claim.numbers
    table = comm.tensor_backend.all_gather(torch.from_numpy(header).to(comm.device)).cpu().numpy()
    if not table[:, 0].any() and (table[:, 1:3] == table[0, 1:3]).all():
        return table[:, 3:]
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
