"""What ranks that do not match are told: each rank's layout, its digest, and the words.

A layout is what must be equal on every rank for a call to go ahead; when ranks differ,
every rank builds the same message from every rank's layout or reason, so every rank
raises the same error. Used by the layout agreement (:mod:`distcomm.wire.layout_agreement`), the
object collectives (:mod:`distcomm.wire.objects`) and the gathers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from distcomm.values.conversion import dtype_name

Layout = tuple[tuple[str, Any], ...]
"""``(path, description)`` pairs in an order every rank shares (sorted by path). A description
is a string, or a tuple ``(kind, dtype, shape[, device type])`` that :func:`show` puts in words."""

def digest64(data: bytes) -> int:
    """A signed 64-bit digest of ``data`` (it travels in an int64 header word)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


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
    text = f"{kind} {dtype_name(dtype)}{list(shape)}"
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
