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

from typing import TYPE_CHECKING

import attrs
import numpy as np
import torch

from distcomm.errors import InconsistentInputError, WireFormatError
from distcomm.wire.call_check import CallSlots, check_carrying, gather_slots, holds, uniform_slots
from distcomm.wire.mismatch import Layout, digest64, explain
from distcomm.wire.objects import all_gather_payloads

if TYPE_CHECKING:
    from distcomm.wire.context import WireContext

_OK, _REFUSED = 0, 1


@attrs.frozen
class Claim:
    """What one rank says about its part in a call.

    ``layout`` must be equal on every rank; ``numbers`` (int64 each) are shown to every
    rank; ``problem`` is why this rank cannot take part (then every rank raises).
    """

    layout: Layout
    numbers: tuple[int, ...] = ()
    problem: str | None = None


def agree(context: WireContext, operation: str, claim: Claim, header: bytes | None = None) -> np.ndarray:
    """Every rank's ``claim.numbers``, one row per rank, once every layout matches.

    The agreement is the call's opening (:mod:`distcomm.wire.call_check`): when every rank
    makes the same claim, its check is the only collective; ranks in another call raise too.
    Raises :class:`~distcomm.InconsistentInputError` on every rank when some rank has a
    problem or the layouts differ. ``header`` is ``claim_header(claim)``, where the caller keeps it.
    """
    header = header or claim_header(claim)
    held = context.world_size == 1 or holds(context, operation, "layout", header)
    if held and not claim.problem:  # every rank made this claim: nothing to read
        return _same_numbers(header, context.world_size)
    return _after_check(context, operation, claim, header, held)


def agree_carrying(context: WireContext, operation: str, claim: Claim, header: bytes, tensor: torch.Tensor, src: int) -> None:
    """:func:`agree` on a claim without numbers for a broadcast of ``tensor`` (at most 8 bytes) from
    ``src``, whose bytes travel in the check itself: once every rank made the same claim, every
    rank's ``tensor`` holds ``src``'s. Only where the check can carry
    (:func:`~distcomm.wire.call_check.ands_bits`)."""
    held = check_carrying(context, operation, "layout", header, tensor, src)
    if held and not claim.problem:
        return
    _after_check(context, operation, claim, header, held)  # raises where the claims differ
    raise WireFormatError(f"{operation}: a rank's call check does not match its opening, which names this call")


def _after_check(context: WireContext, operation: str, claim: Claim, header: bytes, held: bool) -> np.ndarray:
    """Every rank's numbers after a check that did not hold (or held for a refusal every rank
    made): read every rank's header from the second step, and raise unless only numbers differ."""
    words = 3 + len(claim.numbers)
    target = context.device
    slots = uniform_slots(context, operation, "layout", header, target) if held else gather_slots(context, operation, "layout", header, target)
    table = _read_headers(slots, operation, words)
    if not table[:, 0].any() and (table[:, 1:3] == table[0, 1:3]).all():
        return table[:, 3:words]
    claims = gather_claims(context, operation, (claim.problem, claim.layout))
    raise InconsistentInputError(explain(operation, claims))


_NUMBERS: dict[tuple[bytes, int], np.ndarray] = {}


def _same_numbers(header: bytes, world_size: int) -> np.ndarray:
    """The numbers of ``header`` as every rank's (read-only; remembered for headers seen before)."""
    known = _NUMBERS.get((header, world_size))
    if known is None:
        known = np.broadcast_to(np.frombuffer(header, dtype="<i8")[3:], (world_size, len(header) // 8 - 3))
        if len(_NUMBERS) < 4096:
            _NUMBERS[header, world_size] = known
    return known


_DIGESTS: dict[str, int] = {}


def claim_header(claim: Claim) -> bytes:
    """A claim as it travels: status, layout digest, layout length, numbers (int64 words). The
    digests of layouts seen before are remembered, so a training loop's calls hash nothing."""
    text = repr(claim.layout)
    digest = _DIGESTS.get(text)
    if digest is None:
        digest = digest64(text.encode())
        if len(_DIGESTS) < 4096:
            _DIGESTS[text] = digest
    status = _REFUSED if claim.problem else _OK
    return np.array((status, digest, len(claim.layout), *claim.numbers), dtype="<i8").tobytes()


def _read_headers(slots: CallSlots, operation: str, words: int) -> np.ndarray:
    """Every rank's agreement header, one row per rank, each checked against the wire format."""
    rows: list[np.ndarray] = []
    for rank, size in enumerate(slots.sizes):
        row = slots.words(rank, words)
        if row is None:
            raise WireFormatError(f"{operation}: rank {rank} sent a body of {size} bytes, shorter than the {8 * words}-byte agreement header")
        if row[0] not in (_OK, _REFUSED) or row[2] < 0:
            raise WireFormatError(f"{operation}: rank {rank} sent an agreement header with status {row[0]} and {row[2]} layout entries")
        rows.append(row)
    return np.stack(rows)


def gather_claims(context: WireContext, operation: str, claim: tuple[str | None, Layout]) -> list[tuple[str | None, Layout]]:
    """Every rank's ``(problem, layout)``, to explain a mismatch; a peer's malformed claim is a
    :class:`~distcomm.errors.WireFormatError`."""
    claims = []
    for rank, payload in enumerate(all_gather_payloads(context, claim, operation, step="explain")):
        value = context.object_codec.decode(payload)
        if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, type(None)))
                and isinstance(value[1], tuple)
                and all(isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) for e in value[1])):  # fmt: skip
            raise WireFormatError(f"{operation}: rank {rank} sent a malformed layout claim: {value!r:.80}")
        claims.append(value)
    return claims
