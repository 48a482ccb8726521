"""Agreeing on which ranks are still alive, through the job's key-value store.

After a rank dies its group is broken, so the survivors cannot agree through it. They meet
in the store the job already has instead (torchrun's agent store, the file store of a
``file://`` rendezvous, the TCP store of a SLURM or LSF job), under a key of their own for
each attempt (a generation):

1. every rank that arrives writes ``arrived/<rank>`` (with a note, such as how many process
   groups it holds) and counts itself in;
2. once every rank arrived, or ``window`` seconds after the first one did (at least the
   group's timeout: a survivor that learns of the death only when its own collective
   times out arrives up to a timeout after one that saw the connection close), the first
   rank to notice proposes the members it sees, with one atomic ``compare_set`` of
   ``members``: only the first proposal is ever written, and every rank reads that one;
3. a rank that is not in ``members`` (it arrived late, or was stopped and woke up) gets
   :class:`~distcomm.errors.ExcludedRankError`: never a membership of its own; a rank that is
   alive but left the job because its own step raised (:func:`leave`) is counted as
   arrived-and-failed, so the survivors learn it is not dead and stop instead of dropping it;
4. once a member has formed the survivors' group it says so (:func:`confirm_formed`); the
   group is used only when every member did, else all of them agree again on the next
   generation.

So two survivors can never hold different memberships of one generation (no split brain).
A store that cannot be reached (its host was the rank that died, as rank 0 of an
``env://`` job without torchrun) is a :class:`~distcomm.CollectiveError` naming that cause.

Tested in-process over a real torch store and with real ranks: tests/wire/test_survivors.py,
tests/test_shrinking.py.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import attrs

from distcomm.errors import CollectiveError, ExcludedRankError, InvalidArgumentError, WireFormatError

if TYPE_CHECKING:
    from distcomm.backends.backend import Backend
    from distcomm.wire.context import WireContext

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.02
"""How often a waiting rank looks at the store again."""
MAX_GENERATIONS = 8
"""How many times survivors agree again when one of them dies while they do."""


def store_key(group_name: str) -> str:
    """Where the survivors of the group named ``group_name`` meet in the store."""
    return f"distcomm/shrink/{group_name}"


def form_survivors(context: WireContext, group_name: str, timeout: datetime.timedelta, settle: float) -> Backend:
    """A backend over the ranks that call this (this rank among them), agreed on through the job's
    store and formed without the broken group; a rank left out gets :class:`ExcludedRankError`, and
    a rank that left alive (:func:`leave`) makes every survivor raise instead of dropping it."""
    store, rank, world_size = context.backend.store, context.rank, context.world_size
    if store is None and world_size > 1:
        raise InvalidArgumentError(f"shrink: the {context.backend.name} backend has no key-value store to agree through")
    started, key = time.monotonic(), store_key(group_name)
    problem: BaseException | None = None
    for _ in range(MAX_GENERATIONS):
        generation = context.state.generations  # shared with views: a generation is never used twice
        context.state.generations += 1
        survivors, notes = [0], [""]
        if world_size > 1:
            membership = decide_survivors(
                store, key, generation, rank, world_size,
                window=timeout.total_seconds() + float(settle), note=str(context.backend.group_count()),
            )  # fmt: skip
            survivors, notes = list(membership.survivors), list(membership.notes)
            if membership.failed:  # alive, so not to be dropped: the job stops on every rank
                listing = "; ".join(f"rank {r}: {why}" for r, why in membership.failed)
                raise CollectiveError(
                    "shrink", rank,
                    f"rank(s) {', '.join(str(r) for r, _ in membership.failed)} are alive but their own step raised "
                    f"({listing}); they are not dropped: the job stops on every rank",
                )  # fmt: skip
        try:
            backend = context.backend.survivors(survivors, notes, timeout)
        except (CollectiveError, RuntimeError) as error:  # a survivor died meanwhile: agree again without it
            if isinstance(error, ExcludedRankError):
                raise
            problem = error
            logger.warning("shrink: the survivors %s of generation %d could not form a group (%s); agreeing again", survivors, generation, error)
            continue
        if world_size > 1 and not confirm_formed(store, key, generation, len(survivors), timeout.total_seconds()):
            backend.close()
            problem = CollectiveError("shrink", rank, f"not every survivor of generation {generation} formed the group")
            logger.warning("shrink: not every survivor %s of generation %d formed the group; agreeing again", survivors, generation)
            continue
        lost = sorted(set(range(world_size)) - set(survivors))
        logger.warning(
            "shrink: rank %d of %d goes on as rank %d of %d; lost rank(s) %s (%.2f s)",
            rank, world_size, survivors.index(rank), len(survivors), lost, time.monotonic() - started,
        )  # fmt: skip
        return backend
    raise CollectiveError("shrink", rank, f"no group of survivors formed in {MAX_GENERATIONS} attempts: {problem}")


@attrs.frozen
class Membership:
    """The survivors of one generation: their old ranks in order, and what each noted."""

    generation: int
    survivors: tuple[int, ...]
    notes: tuple[str, ...]
    failed: tuple[tuple[int, str], ...] = ()
    """Ranks that are alive but left the job (their step raised), with what they raised."""

    def note_of(self, rank: int) -> str:
        return self.notes[self.survivors.index(rank)]


def decide_survivors(store: Any, key: str, generation: int, rank: int, world_size: int, *, window: float, note: str = "") -> Membership:
    """The survivors of ``generation`` under ``key``, the same on every rank that gets one.

    Waits until all ``world_size`` ranks came or ``window`` seconds passed since this rank
    did (the first rank's window ends first); raises :class:`ExcludedRankError` on a rank
    that is not a member.
    """
    prefix = f"{key}/{generation}/"
    started = time.monotonic()
    try:
        count = arrive(store, key, generation, rank, note)
        while True:
            if store.check([f"{prefix}members"]):
                decided = store.get(f"{prefix}members")
                break
            if count >= world_size or time.monotonic() - started >= window:
                decided = store.compare_set(f"{prefix}members", "", _propose(store, prefix, world_size))
                break
            time.sleep(POLL_SECONDS)
            count = store.add(f"{prefix}count", 0)
    except (RuntimeError, OSError, TimeoutError) as error:  # a store that no longer answers
        raise CollectiveError(
            "shrink",
            rank,
            f"the job's key-value store cannot be reached ({type(error).__name__}: {error}); survivors agree through it, "
            "so when it lived in the rank that died (rank 0 of an env:// job started without torchrun) they cannot: "
            "start jobs with torchrun, whose agent keeps the store, or with a file:// rendezvous",
        ) from error
    membership = _parse(decided, generation)
    if rank not in membership.survivors:
        raise ExcludedRankError(
            "shrink",
            rank,
            f"rank {rank} is not among the survivors {list(membership.survivors)} of generation {generation}: it arrived "
            "after they were agreed (it was stopped, or busy elsewhere); it cannot rejoin them: end this process",
        )
    return membership


def confirm_formed(store: Any, key: str, generation: int, members: int, timeout: float) -> bool:
    """Say that this member formed the survivors' group of ``generation``; whether all ``members``
    did within ``timeout`` seconds. A member whose forming failed (it timed out just as the others
    finished) never says so: then every member drops the group and agrees again, so no member
    goes on in a group another has left."""
    counter = f"{key}/{generation}/formed"
    deadline = time.monotonic() + timeout
    try:
        count = int(store.add(counter, 1))
        while count < members and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            count = int(store.add(counter, 0))
    except (RuntimeError, OSError, TimeoutError):  # the store is gone: the next agreement says so
        return False
    return count >= members


def leave(store: Any, key: str, generation: int, rank: int, reason: str) -> None:
    """Say in the store that ``rank`` is alive but leaves the job with ``reason`` (its own step
    raised): survivors of ``generation`` count it as arrived and failed, never as dead."""
    store.set(f"{key}/{generation}/failed/{rank}", reason)
    store.add(f"{key}/{generation}/count", 1)


def stay(store: Any, key: str, generation: int, rank: int) -> None:
    """Take back :func:`leave`: ``rank`` went on after all (its caller handled the error)."""
    if store.delete_key(f"{key}/{generation}/failed/{rank}"):
        store.add(f"{key}/{generation}/count", -1)


def arrive(store: Any, key: str, generation: int, rank: int, note: str = "") -> int:
    """Say in the store that ``rank`` is alive for ``generation``; how many ranks said so by now."""
    prefix = f"{key}/{generation}/"
    store.set(f"{prefix}arrived/{rank}", note)
    return int(store.add(f"{prefix}count", 1))


def _propose(store: Any, prefix: str, world_size: int) -> str:
    """The members this rank sees now, with their notes, as one string to compare_set."""
    present = [r for r in range(world_size) if store.check([f"{prefix}arrived/{r}"])]
    notes = [store.get(f"{prefix}arrived/{r}").decode() for r in present]
    failed = [r for r in range(world_size) if r not in present and store.check([f"{prefix}failed/{r}"])]
    reasons = [store.get(f"{prefix}failed/{r}").decode(errors="replace") for r in failed]
    return json.dumps({"survivors": present, "notes": notes, "failed": [[r, why] for r, why in zip(failed, reasons)]})


def _parse(value: bytes | str, generation: int) -> Membership:
    try:
        data = json.loads(value)
        survivors = tuple(int(r) for r in data["survivors"])
        notes = tuple(str(n) for n in data["notes"])
        failed = tuple((int(r), str(why)) for r, why in data.get("failed", []))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise WireFormatError(f"the survivors' membership in the store is malformed: {value!r:.80}") from error
    if len(notes) != len(survivors) or list(survivors) != sorted(set(survivors)):
        raise WireFormatError(f"the survivors' membership in the store is malformed: {value!r:.80}")
    return Membership(generation, survivors, notes, failed)


def leave_job(context: WireContext, group_name: str, reason: str) -> bool:
    """:func:`leave` for this rank of ``context``'s group, under the generation its next shrink would
    use; whether it was said (not over one rank, nor without a store, nor when the store fails)."""
    store = context.backend.store
    if store is None or context.world_size == 1:
        return False
    try:
        leave(store, store_key(group_name), context.state.generations, context.rank, reason)
    except (RuntimeError, OSError, TimeoutError) as error:
        logger.warning("rank %d could not tell the others it leaves (%s)", context.rank, error)
        return False
    return True


def stay_in_job(context: WireContext, group_name: str) -> None:
    """Take back :func:`leave_job`: this rank went on after all."""
    try:
        stay(context.backend.store, store_key(group_name), context.state.generations, context.rank)
    except (RuntimeError, OSError, TimeoutError, AttributeError) as error:
        logger.warning("rank %d could not take back that it left (%s)", context.rank, error)
