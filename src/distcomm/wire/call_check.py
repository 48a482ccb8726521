"""The opening step every checked distcomm collective starts with: every rank says which call it
is in, and what each rank must show the others, in one all-reduce of a fixed size.

The check (``CHECK_WORDS`` float64 words, summed across the ranks, whatever the world size):

==============  ===========================================================================
words           meaning
==============  ===========================================================================
0               ``CHECK_MARK`` from each rank: the sum is ``world_size * CHECK_MARK`` only
                when every rank sent a check (a lone tensor's collective sends data)
1               refusals: how many ranks refuse their call (a bad argument of their own)
2               overflows: how many ranks had a body too large for their share
3-6, 7-10       the call's fingerprint (a 64-bit digest of its tag, in four 16-bit chunks
                ``c``) and the chunks' squares: every rank sent the same fingerprint exactly
                when ``world_size * sum(c * c) == sum(c) ** 2`` for every chunk (equality
                in Cauchy-Schwarz), checked in exact integers
11-             the call's summed values (``summed``: the same count on every rank), then
                one share a rank: its body's size, then its body, 6 bytes a word
==============  ===========================================================================

Every word a rank sends is an integer below 2**48 or one of the summed values, and every
share is written by one rank only, so the sums are exact. Bytes on the wire do not grow
with the world; a rank's share of them does shrink, and a body that does not fit it (or
a mismatch, or a refusal) makes every rank take a second step: an ``all_gather`` of one
slot per rank, which carries larger bodies and names each rank's call:

==========  =====  ==========================================================
bytes       what   meaning
==========  =====  ==========================================================
0-7         magic  ``distcom1``: the bytes are a distcomm call header, version 1
8-39        tag    the call and its step, in ASCII (``all_reduce layout``)
40-47       size   how many body bytes follow (int64, little-endian)
48-         body   the step's own header words and, when it fits, its data
==========  =====  ==========================================================

Every rank reads the same sums, so every rank takes the same steps and raises the same
:class:`~distcomm.InconsistentInputError` naming each rank's call. Nothing a peer sends
is trusted: a missing magic, an unreadable tag or a body size out of bounds raises
:class:`~distcomm.errors.WireFormatError` on the ranks that received it. The step's
own body is parsed by its module (:mod:`~distcomm.wire.layout_agreement`, :mod:`~distcomm.wire.objects`,
:mod:`~distcomm.wire.gather`), with the same rule.

Collectives that move a lone tensor as it is (the hot paths) take no opening step; the
docs/semantics.md ("When ranks call different collectives") says which pairs torch cannot tell
apart there (among them a lone float64 sum of exactly ``CHECK_WORDS`` elements meeting a
check), and :class:`~distcomm.CheckedCommunicator` catches them.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, NoReturn

import attrs
import numpy as np
import torch

from distcomm.errors import InconsistentInputError, InvalidArgumentError, WireFormatError
from distcomm.values.ops import ReduceOp

if TYPE_CHECKING:
    from distcomm.wire.context import WireContext

MAGIC = b"distcom1"
TAG_BYTES = 32
PREFIX_BYTES = len(MAGIC) + TAG_BYTES + 8
REFUSAL = b"refused "
"""How the tag of a refusal starts: a rank that cannot make its call (a bad argument of its own)
sends this instead of the call's tag, and the reason as the body (:func:`refuse`)."""
SMALL_WORLD_MAX = 16
"""Up to this world size the second step's slot has room for small payloads (4 KB a rank); above it, 512 bytes."""
CHECK_WORDS = 509
"""The check's size in float64 words (4 KB), the same for every call and world."""
CHECK_MARK = 7919.0
_MARK, _REFUSALS, _OVERFLOWS, _CHUNKS, _SQUARES, _HEAD_WORDS = 0, 1, 2, 3, 7, 11
_WORD_BYTES = 6
"""Body bytes a check word carries: an integer below 2**48 stays exact in a float64 sum."""


def slot_bytes(world_size: int) -> int:
    """The second step's slot size in a world of ``world_size`` ranks: the same for every call."""
    return 4096 if world_size <= SMALL_WORLD_MAX else 512


def slot_room(world_size: int) -> int:
    """How many body bytes the second step's slot holds in a world of ``world_size`` ranks."""
    return slot_bytes(world_size) - PREFIX_BYTES


def _share_words(world_size: int, summed: int) -> int:
    return (CHECK_WORDS - _HEAD_WORDS - summed) // world_size


def body_room(world_size: int, summed: int = 0) -> int:
    """How many body bytes fit a rank's share of the check (beside ``summed`` summed values): a
    call whose bodies fit takes one collective."""
    return max(0, _share_words(world_size, summed) - 1) * _WORD_BYTES


def summed_room(world_size: int) -> int:
    """How many values may be summed in the check itself (leaving each rank a share of 8 words)."""
    return max(0, CHECK_WORDS - _HEAD_WORDS - 8 * world_size)


def pack_words(raw: bytes | np.ndarray) -> np.ndarray:
    """``raw`` as float64 words of 6 bytes each (integers below 2**48: exact in any sum)."""
    data = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray)) else raw.reshape(-1).view(np.uint8)
    count = -(-len(data) // _WORD_BYTES)
    padded = np.zeros(count * _WORD_BYTES, dtype=np.uint8)
    padded[: len(data)] = data
    wide = np.zeros((count, 8), dtype=np.uint8)
    wide[:, :_WORD_BYTES] = padded.reshape(count, _WORD_BYTES)
    return wide.view("<u8").reshape(-1).astype(np.float64)


def unpack_words(words: np.ndarray, nbytes: int) -> np.ndarray:
    """The first ``nbytes`` bytes that :func:`pack_words` packed into ``words`` (uint8)."""
    whole = np.clip(np.nan_to_num(words, nan=0.0), 0, 2.0**48 - 1).astype("<u8")
    return whole.view(np.uint8).reshape(-1, 8)[:, :_WORD_BYTES].reshape(-1)[:nbytes]


@attrs.frozen
class CallSlots:
    """Every rank's opening slot: ``rows`` on the device the call used, ``host`` on the CPU
    (the prefixes and bodies), and each rank's body size (already checked)."""

    rows: torch.Tensor
    host: np.ndarray
    sizes: tuple[int, ...]
    sums: np.ndarray | None = None
    """The ``summed`` values, summed over the ranks (float64), when the call sent some."""

    def body(self, rank: int) -> np.ndarray:
        """Rank ``rank``'s body bytes (a view)."""
        return self.host[rank, PREFIX_BYTES : PREFIX_BYTES + self.sizes[rank]]

    def words(self, rank: int, count: int) -> np.ndarray | None:
        """The first ``count`` int64 words of ``rank``'s body, or ``None`` when its body is shorter."""
        if self.sizes[rank] < 8 * count:
            return None
        return self.body(rank)[: 8 * count].view("<i8")

    def data(self, offset: int, nbytes: int) -> torch.Tensor:
        """Bytes ``offset`` to ``offset + nbytes`` of every rank's body, as a ``(world, nbytes)``
        uint8 tensor on the call's device (the caller has checked the bounds)."""
        start = PREFIX_BYTES + offset
        return self.rows[:, start : start + nbytes]


def tag_of(operation: str, step: str) -> bytes:
    """The tag of ``step`` in ``operation``, as it travels: ASCII, cut or padded to 32 bytes."""
    text = f"{operation} {step}".strip().encode("ascii", errors="replace")[:TAG_BYTES]
    return text.ljust(TAG_BYTES, b"\0")


_PREFIXES: dict[tuple[str, str], bytes] = {}
"""The magic and tag of each (operation, step), as they travel (made once per call kind)."""


def _prefix(operation: str, step: str) -> bytes:
    known = _PREFIXES.get((operation, step))
    if known is None:
        known = _PREFIXES[operation, step] = MAGIC + tag_of(operation, step)
    return known


def check_call(
    context: WireContext,
    operation: str,
    step: str,
    body: bytes | np.ndarray = b"",
    data: torch.Tensor | None = None,
    device: torch.device | None = None,
    summed: np.ndarray | None = None,
) -> CallSlots:
    """Check that every rank is in the same call, and show every rank every rank's body.

    ``body`` (host bytes) and then ``data`` (a flat tensor's bytes) must fit :func:`slot_room`;
    when they fit :func:`body_room` on every rank, the check is the call's only step.
    ``summed`` (float64 values, as many on every rank, at most :func:`summed_room`) come back
    summed over the ranks in ``sums``. Raises the same :class:`~distcomm.InconsistentInputError`
    on every rank when ranks are in different calls, and :class:`~distcomm.errors.WireFormatError`
    when a peer's check or slot is not one. Over one rank nothing is exchanged.
    """
    world = context.world_size
    head = body.tobytes() if isinstance(body, np.ndarray) else bytes(body)
    if data is not None:
        head += data.detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
    if len(head) > slot_room(world):
        raise AssertionError(f"an opening body of {len(head)} bytes does not fit a {slot_bytes(world)}-byte slot")
    target = device or (context.device if data is None else data.device)
    if world == 1:
        host = np.frombuffer(bytearray(_prefix(operation, step) + len(head).to_bytes(8, "little") + head), dtype=np.uint8)
        rows = _on(torch.from_numpy(host.reshape(1, -1)), target)
        return CallSlots(rows, host.reshape(1, -1), (len(head),), None if summed is None else summed.astype(np.float64))
    sums, slots = _check(context, operation, step, head, target, summed)
    if slots is None:  # a mismatch, a refusal or a body larger than its share: the second step
        slots = _gather_slots(context, operation, step, head, target)
    return CallSlots(slots.rows, slots.host, slots.sizes, sums) if sums is not None else slots


_FINGERPRINTS: dict[tuple[bytes, int], np.ndarray] = {}


def _fingerprint(prefix: bytes, summed: int) -> np.ndarray:
    """A call's fingerprint words: four 16-bit chunks of a digest of its tag (and of how many
    values it sums), then their squares."""
    known = _FINGERPRINTS.get((prefix, summed))
    if known is None:
        digest = hashlib.blake2b(prefix + summed.to_bytes(4, "little"), digest_size=8).digest()
        chunks = np.frombuffer(digest, dtype="<u2").astype(np.float64)
        known = _FINGERPRINTS[prefix, summed] = np.concatenate([chunks, chunks * chunks])
    return known


def _on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor if device.type == "cpu" else tensor.to(device)


def _check(
    context: WireContext, operation: str, step: str, head: bytes, target: torch.device, summed: np.ndarray | None
) -> tuple[np.ndarray | None, CallSlots | None]:
    """The first step: one all-reduce of :data:`CHECK_WORDS` words. Returns the sums, and every
    rank's body when every rank is in this call and every body fit its share (else ``None``)."""
    world, rank = context.world_size, context.rank
    count = 0 if summed is None else len(summed)
    share = _share_words(world, count)
    prefix = _prefix(operation, step)
    words = np.zeros(CHECK_WORDS, dtype=np.float64)
    words[_MARK] = CHECK_MARK
    words[_CHUNKS:_HEAD_WORDS] = _fingerprint(prefix, count)
    base = _HEAD_WORDS + count
    if count:
        words[_HEAD_WORDS:base] = summed
    if prefix[len(MAGIC) : len(MAGIC) + len(REFUSAL)] == REFUSAL:
        words[_REFUSALS] = 1.0
    elif head and len(head) > max(0, share - 1) * _WORD_BYTES:
        words[_OVERFLOWS] = 1.0
    elif head:
        start = base + rank * share
        packed = pack_words(head)
        words[start] = len(head)
        words[start + 1 : start + 1 + len(packed)] = packed
    tensor = _on(torch.from_numpy(words), target)
    context.backend.all_reduce(tensor, ReduceOp.SUM)
    total = tensor.numpy() if tensor.device.type == "cpu" else tensor.cpu().numpy()
    if total[_MARK] != world * CHECK_MARK:
        raise WireFormatError(
            f"{operation}: some rank sent a buffer that is not a distcomm call check: it is in a collective that "
            "sends a lone tensor as it is, in a raw torch.distributed call, or runs another version of distcomm "
            "(see 'When ranks call different collectives' in docs/semantics.md)"
        )
    chunks, squares = total[_CHUNKS:_SQUARES], total[_SQUARES:_HEAD_WORDS]
    same = all(world * int(q) == int(c) ** 2 for c, q in zip(chunks.tolist(), squares.tolist()))
    if not same or total[_REFUSALS] != 0:
        return None, None  # the second step names each rank's call, or its reason
    sums = total[_HEAD_WORDS:base].copy() if count else None
    if total[_OVERFLOWS] != 0:
        return sums, None
    if share < 1:  # no share at all: every body was empty, or some rank overflowed
        return sums, CallSlots(torch.zeros((world, PREFIX_BYTES), dtype=torch.uint8), np.zeros((world, PREFIX_BYTES), np.uint8), (0,) * world)
    shares = total[base : base + world * share].reshape(world, share)
    sizes = shares[:, 0]
    room = (share - 1) * _WORD_BYTES
    if not ((sizes >= 0) & (sizes <= room) & (sizes == np.floor(sizes))).all():
        bad = [r for r, n in enumerate(sizes.tolist()) if not (0 <= n <= room and n == int(n))]
        raise WireFormatError(
            f"{operation}: rank(s) {', '.join(map(str, bad))} announced an opening body of "
            f"{', '.join(str(sizes[r]) for r in bad)} bytes, outside 0..{room}"
        )
    longest = int(sizes.max())
    host = np.zeros((world, PREFIX_BYTES + longest), dtype=np.uint8)
    if longest:
        used = -(-longest // _WORD_BYTES)
        host[:, PREFIX_BYTES:] = unpack_words(shares[:, 1 : 1 + used], used * _WORD_BYTES * world).reshape(world, -1)[:, :longest]
    return sums, CallSlots(_on(torch.from_numpy(host), target), host, tuple(int(n) for n in sizes.tolist()))


def _gather_slots(context: WireContext, operation: str, step: str, head: bytes, target: torch.device) -> CallSlots:
    """The second step: every rank's full slot (its call's tag and its body), all-gathered and read."""
    world = context.world_size
    size = slot_bytes(world)
    end = PREFIX_BYTES + len(head)
    raw = bytearray(size)
    raw[: len(MAGIC) + TAG_BYTES] = _prefix(operation, step)
    raw[len(MAGIC) + TAG_BYTES : PREFIX_BYTES] = len(head).to_bytes(8, "little", signed=True)
    raw[PREFIX_BYTES:end] = head
    slot = _on(torch.frombuffer(raw, dtype=torch.uint8), target)
    rows = context.backend.all_gather(slot)
    table = rows.numpy() if rows.device.type == "cpu" else rows[:, :end].cpu().numpy()
    return CallSlots(rows, table, read_prefixes(table, operation, step, size, rows))


def refuse(context: WireContext, operation: str, problem: str) -> NoReturn:
    """Take part in a call's opening with ``problem`` (this rank's own bad argument) instead of the
    call, so that every rank raises it at once rather than this one alone while the others wait
    out the timeout: every rank reads the same slots and raises the same
    :class:`~distcomm.InconsistentInputError`, naming each refusing rank and its reason. Over one
    rank it is simply raised."""
    if context.world_size == 1:
        raise InvalidArgumentError(problem)
    reason = problem.encode("utf-8", errors="replace")[: slot_room(context.world_size)]
    opened = check_call(context, REFUSAL.decode() + operation, "", reason)  # returns when every rank refused alike
    _raise_refusals(opened.rows.cpu().numpy(), operation, np.array(opened.sizes), slot_room(context.world_size))
    raise AssertionError("a refusal was not read back")  # pragma: no cover


def read_prefixes(table: np.ndarray, operation: str, step: str, size: int, rows: torch.Tensor | None = None) -> tuple[int, ...]:
    """Check every rank's prefix in ``table`` (one row per rank); every rank's body size.

    Every rank reads the same table, so every rank raises the same error. ``rows`` (the slots
    as gathered) is read whole only when some rank refused its call and the reasons are needed.
    """
    expected = _prefix(operation, step)
    sizes = table[:, len(MAGIC) + TAG_BYTES : PREFIX_BYTES].copy().view("<i8")[:, 0]
    found = sizes.tolist()
    room = size - PREFIX_BYTES
    if table[:, : len(expected)].tobytes() == expected * len(table) and min(found) >= 0 and max(found) <= room:
        return tuple(found)  # the common case: one comparison of bytes, two of numbers
    _raise_refusals(table if rows is None else rows.cpu().numpy(), operation, sizes, room)
    magic, mine = np.frombuffer(MAGIC, dtype=np.uint8), tag_of(operation, step)
    strangers = [rank for rank, row in enumerate(table) if not np.array_equal(row[: len(MAGIC)], magic)]
    if strangers:
        raise WireFormatError(
            f"{operation}: rank(s) {', '.join(map(str, strangers))} sent bytes that are not a distcomm call header: "
            "they are in a collective that sends a lone tensor as it is, in a raw torch.distributed call, or "
            "run another version of distcomm (see 'When ranks call different collectives' in docs/semantics.md)"
        )
    tags = [bytes(row[len(MAGIC) : len(MAGIC) + TAG_BYTES]) for row in table]
    if any(tag != mine for tag in tags):
        calls = [_readable(tag) for tag in tags]
        listing = "; ".join(f"rank {rank}: {call}" for rank, call in enumerate(calls))
        raise InconsistentInputError(  # the same words on every rank, whichever call it is in
            f"ranks are in different collectives ({listing}); every rank must make the same calls in the same order"
        )
    bad = [rank for rank, n in enumerate(sizes) if not 0 <= n <= room]
    raise WireFormatError(
        f"{operation}: rank(s) {', '.join(map(str, bad))} announced an opening body of "
        f"{', '.join(str(int(sizes[r])) for r in bad)} bytes, outside 0..{room}"
    )


def _raise_refusals(table: np.ndarray, operation: str, sizes: np.ndarray, room: int) -> None:
    """Raise every refusing rank's reason (the same error on every rank), where some rank refused."""
    magic = np.frombuffer(MAGIC, dtype=np.uint8)
    refusing = [
        rank for rank, row in enumerate(table)
        if np.array_equal(row[: len(MAGIC)], magic) and bytes(row[len(MAGIC) : len(MAGIC) + len(REFUSAL)]) == REFUSAL
    ]  # fmt: skip
    if not refusing:
        return
    reasons = []
    for rank in refusing:
        size = int(sizes[rank])
        if not 0 <= size <= room:
            raise WireFormatError(f"{operation}: rank {rank} refused its call with a reason of {size} bytes, outside 0..{room}")
        text = bytes(table[rank, PREFIX_BYTES : PREFIX_BYTES + size]).decode("utf-8", errors="replace")
        reasons.append(f"rank {rank} cannot take part: {text}")
    raise InconsistentInputError("; ".join(reasons))  # the same words on every rank


def _readable(tag: bytes) -> str:
    """A peer's tag in words (printable ASCII only; anything else is shown escaped)."""
    text = tag.rstrip(b"\0")
    if text and all(32 <= byte < 127 for byte in text):
        return text.decode("ascii")
    return f"unreadable tag {text[:16]!r}"
