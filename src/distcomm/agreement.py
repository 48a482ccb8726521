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

from distcomm.errors import InconsistentInputError, WireFormatError
from distcomm.opening import Opening, body_room, open_call

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
    return agree_with_data(comm, operation, claim, None)[0]


def agree_with_data(comm: Communicator, operation: str, claim: Claim, data: torch.Tensor | None) -> tuple[np.ndarray, torch.Tensor | None]:
    """:func:`agree`, carrying ``data`` (a small flat tensor on ``comm.device``) in the same collective.

    Returns every rank's numbers and, when every rank sent data (so every rank made the
    same kind of call), every rank's data as a ``(world_size, n)`` tensor; else ``None``,
    and every rank goes on with its data as if it had sent none. The agreement is the
    call's opening step (:mod:`distcomm.opening`), so ranks in another call raise too.
    """
    words = 4 + len(claim.numbers)
    header_bytes = -(-8 * words // 16) * 16  # a multiple of 16: any dtype's view of the data is aligned
    nbytes = -1 if data is None else data.numel() * data.element_size()
    fits = data is not None and header_bytes + nbytes <= body_room(comm.world_size)
    header = np.zeros(header_bytes // 8, dtype="<i8")
    header[:words] = (_REFUSED if claim.problem else _OK, digest64(repr(claim.layout).encode()), len(claim.layout),
                      nbytes if fits else -1, *claim.numbers)  # fmt: skip
    opening = open_call(comm, operation, "layout", header.view(np.uint8), data if fits else None, comm.device)
    table = _read_headers(opening, operation, words, header_bytes, data)
    if not table[:, 0].any() and (table[:, 1:3] == table[0, 1:3]).all():
        sizes = table[:, 3]
        if fits and (sizes == sizes[0]).all():
            gathered = opening.data(header_bytes, int(sizes[0])).view(data.dtype)  # type: ignore[union-attr]
            return table[:, 4:words], gathered
        return table[:, 4:words], None
    claims = exchange_claims(comm, operation, (claim.problem, claim.layout))
    raise InconsistentInputError(explain(operation, claims))


def _read_headers(opening: Opening, operation: str, words: int, header_bytes: int, data: torch.Tensor | None) -> np.ndarray:
    """Every rank's agreement header, one row per rank, each checked against the wire format."""
    rows: list[np.ndarray] = []
    itemsize = 1 if data is None else data.element_size()
    for rank, size in enumerate(opening.sizes):
        row = opening.words(rank, words)
        problem = None
        if row is None:
            problem = f"a body of {size} bytes, shorter than the {8 * words}-byte agreement header"
        elif row[0] not in (_OK, _REFUSED) or row[2] < 0:
            problem = f"an agreement header with status {row[0]} and {row[2]} layout entries"
        elif row[3] != -1 and not (0 <= row[3] == size - header_bytes and row[3] % itemsize == 0):
            problem = f"{row[3]} bytes of inline data in a body of {size} bytes"
        if problem is not None or row is None:
            raise WireFormatError(f"{operation}: rank {rank} sent {problem}")
        rows.append(row)
    return np.stack(rows)


def exchange_claims(comm: Communicator, operation: str, claim: tuple[str | None, Layout]) -> list[tuple[str | None, Layout]]:
    """Every rank's ``(problem, layout)``, to explain a mismatch; a peer's malformed claim is a
    :class:`~distcomm.errors.WireFormatError`."""
    from distcomm.objects import exchange  # objects builds on this module

    claims = []
    for rank, payload in enumerate(exchange(comm, claim, operation, step="explain")):
        value = comm.object_codec.decode(payload)
        if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, type(None)))
                and isinstance(value[1], tuple)
                and all(isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) for e in value[1])):  # fmt: skip
            raise WireFormatError(f"{operation}: rank {rank} sent a malformed layout claim: {value!r:.80}")
        claims.append(value)
    return claims


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
    if not (isinstance(description, tuple) and len(description) in (3, 4) and isinstance(description[2], tuple)):
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
