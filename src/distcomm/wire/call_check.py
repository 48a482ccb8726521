"""The opening step every checked distcomm collective starts with: every rank in the same call,
with the same opening body, in one all-reduce of two words, whatever the world size.

Each rank digests its call's tag and body into ``h`` and sends two int64 words. Where the
backend has a bitwise AND on the check's device (Gloo and MPI on the CPU), the first word
is ``h`` written as a code word of exactly 32 one-bits (52 bits of ``h``, see :func:`code_word`)
and the ranks AND the words: the result keeps 32 one-bits, and equals each rank's own word,
exactly when every rank sent the same word; any difference clears a bit on every rank
alike. The second word is then free to carry up to 8 bytes of one rank's data (the
source's all ones elsewhere, so the AND is the source's bytes): a broadcast of a scalar is
that one collective. Where there is no bitwise AND (NCCL), each rank sends ``[h, -h]`` and
the ranks take the maximum: every rank then holds the largest ``h`` and the smallest, equal
to its own exactly when every rank sent the same. Two words are about the cheapest
all-reduce there is (on Gloo, measured, about a barrier's time, where three words or more
cost more), and they do not grow with the world.

When the check holds, every rank knows every rank's body (its own) and the call goes on.
When it does not (ranks in different calls, a refusal, or bodies that legitimately differ,
such as the shapes of an uneven gather), every rank takes a second step: an
``all_gather`` of one slot per rank, which carries each rank's tag and body:

==========  =====  ==========================================================
bytes       what   meaning
==========  =====  ==========================================================
0-7         magic  ``distcom1``: the bytes are a distcomm call header, version 1
8-39        tag    the call and its step, in ASCII (``all_reduce layout``)
40-47       size   how many body bytes follow (int64, little-endian)
48-         body   the step's own header words and, when it fits, its data
==========  =====  ==========================================================

The slot has one size for every call of a world (:func:`slot_bytes`), so ranks in
different calls still meet in the same collective instead of aborting the process;
every rank then reads every rank's tag and raises the same
:class:`~distcomm.InconsistentInputError` naming each rank's call. Nothing a peer sends
is trusted: a missing magic, an unreadable tag or a body size out of bounds raises
:class:`~distcomm.errors.WireFormatError` on the ranks that received it. The step's
own body is parsed by its module (:mod:`~distcomm.wire.layout_agreement`, :mod:`~distcomm.wire.objects`,
:mod:`~distcomm.wire.gather`), with the same rule.

Collectives that move a lone tensor as it is (the hot paths) take no opening step; the
docs/semantics.md ("When ranks call different collectives") says which pairs torch cannot tell
apart there, and :class:`~distcomm.CheckedCommunicator` catches them.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, NoReturn

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
CHECK_WORDS = 2
"""The check's size in int64 words, the same for every call and world."""
_DIGEST_MASK = (1 << 62) - 1


def slot_bytes(world_size: int) -> int:
    """The second step's slot size in a world of ``world_size`` ranks: the same for every call."""
    return 4096 if world_size <= SMALL_WORLD_MAX else 512


def body_room(world_size: int) -> int:
    """How many body bytes an opening carries in a world of ``world_size`` ranks."""
    return slot_bytes(world_size) - PREFIX_BYTES


@attrs.frozen
class CallSlots:
    """Every rank's opening: ``host`` on the CPU (one row per rank: prefix, then body), each
    rank's body size (already checked), and ``gathered``, the rows as the second step gathered
    them on the call's device (``None`` when the check held and every body is this rank's)."""

    gathered: torch.Tensor | None
    host: np.ndarray
    sizes: tuple[int, ...]
    uniform: bool = False
    """Whether every rank's body is known to be this rank's (the check held: one step)."""
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))

    @property
    def rows(self) -> torch.Tensor:
        """Every rank's row on the call's device (made from ``host`` when nothing was gathered)."""
        if self.gathered is not None:
            return self.gathered
        return _on(torch.from_numpy(np.array(self.host, order="C")), self.device)  # a copy: the host rows may be a read-only view

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
) -> CallSlots:
    """Check that every rank is in the same call, and show every rank every rank's body.

    ``body`` (host bytes) and then ``data`` (a flat tensor's bytes) must fit :func:`body_room`.
    When every rank sent the same call and body, the check is the only step. Raises the same
    :class:`~distcomm.InconsistentInputError` on every rank when ranks are in different calls,
    and :class:`~distcomm.errors.WireFormatError` when a peer's slot is not one. Over one rank
    nothing is exchanged.
    """
    world = context.world_size
    head = body.tobytes() if isinstance(body, np.ndarray) else bytes(body)
    if data is not None:
        head += data.detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
    if len(head) > body_room(world):
        raise AssertionError(f"an opening body of {len(head)} bytes does not fit a {slot_bytes(world)}-byte slot")
    target = device or (context.device if data is None else data.device)
    prefix = _prefix(operation, step)
    if world > 1 and not _same_everywhere(context, prefix + head, target):
        return gather_slots(context, operation, step, head, target)  # the second step
    return uniform_slots(context, operation, step, head, target)


def uniform_slots(context: WireContext, operation: str, step: str, head: bytes, target: torch.device) -> CallSlots:
    """The slots after a check that held: every rank's body is this rank's ``head``."""
    row = np.frombuffer(_prefix(operation, step) + len(head).to_bytes(8, "little") + head, dtype=np.uint8)
    host = np.broadcast_to(row, (context.world_size, len(row)))
    return CallSlots(None, host, (len(head),) * context.world_size, uniform=True, device=target)


def check(context: WireContext, operation: str, step: str = "") -> None:
    """:func:`check_call` for a call with no body (a barrier): nothing to show, only the check."""
    if context.world_size > 1:
        prefix = _prefix(operation, step)
        if not _same_everywhere(context, prefix, context.device):
            gather_slots(context, operation, step, b"", context.device)  # raises when the ranks are in different calls
            raise WireFormatError(f"{operation}: a rank's call check does not match its opening, which names this call")


NOTHING_CARRIED = -1
"""The second word of a check that carries no data: all ones, which an AND leaves as they are."""

_DIGESTS: dict[bytes, tuple[int, int]] = {}


def _digest(opening: bytes) -> tuple[int, int]:
    """A 62-bit digest of a call's tag and body, and its :func:`code_word` (remembered for bodies
    seen before)."""
    known = _DIGESTS.get(opening)
    if known is None:
        digest = int.from_bytes(hashlib.blake2b(opening, digest_size=8).digest(), "little") & _DIGEST_MASK
        known = (digest, code_word(digest))
        if len(opening) <= 256 and len(_DIGESTS) < 4096:  # call headers, not payloads
            _DIGESTS[opening] = known
    return known


_CHUNK_BITS = 13
_HALF_WEIGHT = np.flatnonzero(np.unpackbits(np.arange(1 << 16, dtype=">u2").view(np.uint8)).reshape(-1, 16).sum(axis=1) == 8)
"""The 12,870 16-bit numbers with exactly eight one-bits, in order (the first 2**13 are used)."""


def code_word(digest: int) -> int:
    """``digest``'s low 52 bits as an int64 of exactly 32 one-bits: four 16-bit parts of eight
    one-bits each, one per 13 bits. An AND of such words keeps 32 one-bits only when they are
    all the same word, so every rank reads the same verdict from the same result."""
    word = 0
    for part in range(4):
        chunk = (digest >> (_CHUNK_BITS * part)) & ((1 << _CHUNK_BITS) - 1)
        word |= int(_HALF_WEIGHT[chunk]) << (16 * part)
    return word - (1 << 64) if word >= 1 << 63 else word  # as a signed int64


def ands_bits(context: WireContext) -> bool:
    """Whether this group's check is the bitwise form, which can carry data: where the backend has
    a bitwise AND on the communicator's device (Gloo and MPI, on the CPU). It depends on the group
    alone, never on a call's data, so every rank of a group takes the same form for every call."""
    if context.bitwise is None:
        context.bitwise = context.backend.ands_bits(context.device)
    return context.bitwise


def _same_everywhere(context: WireContext, opening: bytes, target: torch.device, carried: torch.Tensor | None = None, src: int = -1) -> bool:
    """The check: whether every rank sent this ``opening`` (one all-reduce of two words, on
    ``target`` in the ordered form; the bitwise form always runs on the CPU, where it ANDs). With
    ``carried`` (bitwise form only), the second word carries rank ``src``'s ``carried`` bytes, and
    on the other ranks ``carried`` is the tensor to fill, filled when the check holds."""
    digest, code = _digest(opening)
    host, words, second_words = _words(context)
    if not ands_bits(context):
        if carried is not None:
            raise AssertionError("only the bitwise check carries data")
        host[0], host[1] = digest, -digest
        moved = words if target.type == "cpu" else words.to(target)
        context.backend.all_reduce(moved, ReduceOp.MAX)
        if moved is not words:
            host[:] = moved.cpu().numpy()
        largest, negated_smallest = host.tolist()
        return bool(largest == digest == -negated_smallest)
    host[0], host[1] = code, NOTHING_CARRIED
    if carried is None:
        first, second = _and_everywhere(context)
        return first == code and second == NOTHING_CARRIED  # a check that carries nothing leaves the second word all ones
    second_word = _second_word(second_words, words, carried)
    if context.rank == src:
        second_word.copy_(carried.detach())
    first, _ = _and_everywhere(context)
    if first != code:
        return False
    if context.rank != src:
        carried.detach().copy_(second_word)
    return True


def _words(context: WireContext) -> tuple[Any, torch.Tensor, dict[Any, torch.Tensor]]:
    """The context's check words (made on first use): a NumPy array, the tensor sharing its memory,
    and the second word's views by dtype and shape."""
    if context.check_words is None:
        host = np.zeros(CHECK_WORDS, dtype=np.int64)
        context.check_words = (host, torch.from_numpy(host), {})
    return context.check_words


def _and_everywhere(context: WireContext) -> tuple[int, int]:
    """The check's words, ANDed over every rank (on the CPU), as two Python ints."""
    host, words, _ = _words(context)
    context.backend.all_reduce_bitwise_and(words)
    first, second = host.tolist()
    return int(first), int(second)


def _second_word(known: dict[Any, torch.Tensor], words: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The check's second word as a tensor of ``like``'s dtype and shape (at most 8 bytes): a view
    of the words every check reuses, made once per dtype and shape and kept in ``known``."""
    view = known.get((like.dtype, like.shape))
    if view is None:
        view = words[1:].view(torch.uint8)[: like.numel() * like.element_size()].view(like.dtype).reshape(like.shape)
        if len(known) < 64:
            known[like.dtype, like.shape] = view
    return view


def check_carrying(context: WireContext, operation: str, step: str, head: bytes, tensor: torch.Tensor, src: int) -> bool:
    """The check of an opening whose call is a broadcast of ``tensor`` (at most 8 bytes) from rank
    ``src``, moved in the check itself: ``src``'s bytes ride in the second word and every other rank's
    ``tensor`` is filled with them. Whether the check held (when not, nothing was filled, and every
    rank takes the second step). Only where :func:`ands_bits`."""
    return _same_everywhere(context, _prefix(operation, step) + head, context.device, tensor, src)


def holds(context: WireContext, operation: str, step: str, head: bytes) -> bool:
    """The check alone, on the communicator's device: whether every rank opened ``step`` of
    ``operation`` with ``head`` (when not, every rank takes the second step: :func:`check_call`)."""
    return _same_everywhere(context, _prefix(operation, step) + head, context.device)


def _on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor if device.type == "cpu" else tensor.to(device)


def gather_slots(context: WireContext, operation: str, step: str, head: bytes, target: torch.device) -> CallSlots:
    """The second step, after a check that did not hold: every rank's full slot (its call's tag and its body), all-gathered and read."""
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
    reason = problem.encode("utf-8", errors="replace")[: body_room(context.world_size)]
    opened = check_call(context, REFUSAL.decode() + operation, "", reason)  # returns when every rank refused alike
    _raise_refusals(opened.rows.cpu().numpy(), operation, np.array(opened.sizes), body_room(context.world_size))
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
