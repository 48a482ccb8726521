"""``python -m distcomm trace DIR``: read every rank's flight record and say who is stuck where.

For each group of ranks it reports the last call every rank completed, the first call
where ranks' calls differ (operation, dtype, shape, reduce op or root), the ranks stuck
in a call and the ranks that never reached it, each with its call site; and the ranks
that left no record (killed, stopped, or never dumped). The files are plain JSON lines
(see :mod:`distcomm.instrument.flight_recorder`), so this reads them without torch.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

from distcomm.errors import TraceError
from distcomm.instrument.record_format import (
    CALL,
    CALL_FIELDS,
    DEFAULT_DIRECTORY,
    DIRECTORY_VARIABLE,
    HEADER,
    SOME_RANKS,
    STATES,
)

Record = dict[str, Any]

MAX_FILE_BYTES = 256 * 2**20
"""A dump larger than this is not read (a ring of the default 4096 calls takes about 2 MB)."""
MAX_WORLD_SIZE = 2**20


def read_dump(path: Path) -> tuple[Record, list[Record]]:
    """One rank's dump: its header and call records, checked field by field.

    Raises ``ValueError`` saying what is wrong; a path that is not a regular file (a
    link, a FIFO, a device) is never opened, so it cannot hang or flood the reader.
    """
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file (a link, FIFO or device is never read)")
    if info.st_size > MAX_FILE_BYTES:
        raise ValueError(f"{info.st_size} bytes, over the {MAX_FILE_BYTES}-byte limit of a dump")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    with os.fdopen(os.open(path, flags), "rb") as handle:
        text = handle.read(MAX_FILE_BYTES + 1).decode("utf-8", errors="replace")
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                value = json.loads(line)
            except (ValueError, RecursionError) as error:
                raise ValueError(f"line {number} is not JSON ({type(error).__name__})") from None
            if not isinstance(value, dict):
                raise ValueError(f"line {number} is not a record")
            lines.append(value)
    if not lines or lines[0].get("kind") != HEADER:
        raise ValueError("it does not start with a header")
    header = lines[0]
    rank, world_size = header.get("rank"), header.get("world_size")
    if not (_is_int(world_size) and 1 <= world_size <= MAX_WORLD_SIZE and _is_int(rank) and 0 <= rank < world_size):
        raise ValueError(f"its header has rank {rank!r} of world_size {world_size!r}")
    if not isinstance(header.get("job", "job"), str) or not isinstance(header.get("wall_time", 0), (int, float)):
        raise ValueError("its header's job or wall_time is malformed")
    calls = []
    for number, record in enumerate(lines[1:], 2):
        if record.get("kind") != CALL:
            continue
        for field, kinds in CALL_FIELDS.items():
            value = record.get(field)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ValueError(f"line {number}: {field} is {value!r:.40}")
        if record["state"] not in STATES or record["seq"] < 1:
            raise ValueError(f"line {number}: state {record['state']!r:.20}, seq {record['seq']}")
        calls.append(record)
    return header, calls


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def load(
    directory: str | Path, job: str | None = None, skipped: list[str] | None = None
) -> tuple[dict[int, Record], dict[int, list[Record]]]:
    """Every rank's dump header and call records in ``directory`` (the newest dump per rank) of
    one job: ``job``, or the only one there. Files that cannot be read are listed in
    ``skipped`` (when given) with the reason; several jobs and none chosen is a :class:`TraceError`."""
    dumps: dict[str, dict[int, tuple[Record, list[Record]]]] = {}
    for path in sorted(Path(directory).glob("*.jsonl")):
        try:
            header, calls = read_dump(path)
        except (OSError, ValueError) as error:
            if skipped is not None:
                skipped.append(f"{path.name}: {error}")
            continue
        by_rank = dumps.setdefault(str(header.get("job", "job")), {})
        rank = header["rank"]
        if rank in by_rank and by_rank[rank][0].get("wall_time", 0) > header.get("wall_time", 0):
            continue
        by_rank[rank] = ({**header, "path": str(path)}, calls)
    if job is None and len(dumps) > 1:
        listing = "; ".join(f"{name} (ranks {_ranks(sorted(ranks))})" for name, ranks in sorted(dumps.items()))
        raise TraceError(f"records of {len(dumps)} runs are in {directory}: {listing}; they are never combined: choose one with --job")
    chosen = dumps.get(job, {}) if job is not None else next(iter(dumps.values()), {})
    return {rank: header for rank, (header, _) in chosen.items()}, {rank: calls for rank, (_, calls) in chosen.items()}


def where(record: Record) -> str:
    """``train.py:12 in step``."""
    if not record.get("file"):
        return "an unknown place"
    return f"{Path(record['file']).name}:{record['line']} in {record['function']}"


def describe(record: Record) -> str:
    """``all_reduce float32[4] op=sum``: the call as every rank must make it."""
    return " ".join(part for part in (record["op"], record["data"], record["detail"]) if part)


def analyse(headers: dict[int, Record], calls: dict[int, list[Record]]) -> dict[str, Any]:
    """The verdict as data (what ``--json`` prints)."""
    world_size = max((int(h.get("world_size", 1)) for h in headers.values()), default=0)
    missing = [rank for rank in range(world_size) if rank not in headers]
    groups: dict[str, dict[int, dict[int, Record]]] = {}
    for rank, records in calls.items():
        for record in records:
            groups.setdefault(record["group"], {}).setdefault(rank, {})[record["seq"]] = record
    return {
        "world_size": world_size,
        "ranks_with_records": sorted(headers),
        "ranks_without_records": missing,
        "reasons": {rank: header.get("reason") for rank, header in sorted(headers.items())},
        "groups": [_analyse_group(name, by_rank) for name, by_rank in sorted(groups.items())],
    }


def _analyse_group(name: str, by_rank: dict[int, dict[int, Record]]) -> dict[str, Any]:
    ranks = sorted(by_rank)
    reached = {rank: max(records) for rank, records in by_rank.items()}
    completed = {rank: max((s for s, r in records.items() if r["state"] == "completed"), default=0) for rank, records in by_rank.items()}
    divergence = None
    compared = set() if name.endswith(SOME_RANKS) else set.intersection(*(set(records) for records in by_rank.values()))
    for sequence in sorted(compared):
        calls = {rank: by_rank[rank][sequence] for rank in ranks}
        if len({describe(call) for call in calls.values()}) > 1:
            divergence = {"seq": sequence, "calls": {rank: _call(call) for rank, call in calls.items()}}
            break
    unfinished = {
        rank: _call(records[reached[rank]]) for rank, records in by_rank.items() if records[reached[rank]]["state"] != "completed"
    }
    furthest = max(reached.values())
    behind = {} if name.endswith(SOME_RANKS) else {rank: _call(by_rank[rank][reached[rank]]) for rank in ranks if reached[rank] < furthest}
    return {
        "group": name,
        "all_completed_up_to": min(completed.values()),
        "first_difference": divergence,
        "unfinished": unfinished,
        "furthest_call": furthest,
        "behind": behind,
    }


def _call(record: Record) -> dict[str, Any]:
    return {key: record.get(key) for key in ("seq", "op", "data", "detail", "state", "file", "line", "function", "error", "duration_ms")}


def render(verdict: dict[str, Any], directory: str) -> str:
    """The verdict in words, in the style of CheckedCommunicator's mismatch errors."""
    lines = [f"distcomm trace of {directory}: {verdict['world_size']} ranks, records from ranks {_ranks(verdict['ranks_with_records'])}"]
    if verdict["ranks_without_records"]:
        lines.append(
            f"  rank(s) {_ranks(verdict['ranks_without_records'])} left no record: killed, stopped (SIGSTOP), "
            "or never dumped; look at them first"
        )
    for group in verdict["groups"]:
        lines.append(f"group {group['group']!r}: every rank completed calls up to #{group['all_completed_up_to']}")
        difference = group["first_difference"]
        if difference is not None:
            listing = "; ".join(f"rank {rank}: {_text(call)}" for rank, call in difference["calls"].items())
            lines.append(f"  ranks made different calls at #{difference['seq']}: {listing}")
        for rank, call in group["unfinished"].items():
            state = "is stuck in" if call["state"] == "started" else "failed in"
            error = f": {call['error']}" if call.get("error") else ""
            lines.append(f"  rank {rank} {state} {call['op']} #{call['seq']} ({_text(call)}){error}")
        for rank, call in group["behind"].items():
            lines.append(
                f"  rank {rank} never reached #{group['furthest_call']}: its last call was {call['op']} #{call['seq']} "
                f"({call['state']}) at {where(call)}"
            )
        if difference is None and not group["unfinished"] and not group["behind"]:
            lines.append("  every recorded call completed on every rank")
    return "\n".join(lines)


def _text(call: Record) -> str:
    return f"{describe(call)} at {where(call)}"


def _ranks(ranks: Sequence[int]) -> str:
    return ", ".join(map(str, ranks)) or "none"


def has_problem(verdict: dict[str, Any]) -> bool:
    """Whether the verdict finds anything wrong: a rank without records, a difference, a call
    that did not complete, or a rank behind the others."""
    return bool(verdict["ranks_without_records"]) or any(
        group["first_difference"] or group["unfinished"] or group["behind"] for group in verdict["groups"]
    )


def newest_run(base: Path | None = None) -> str | None:
    """The directory of the newest run's records: ``$DISTCOMM_FLIGHT_RECORDER_DIR``, else the
    subdirectory of ``./distcomm-flight-records`` (or ``base``) whose newest dump is the newest."""
    chosen = os.environ.get(DIRECTORY_VARIABLE)
    if chosen and base is None:
        return chosen
    runs = [(max(p.stat().st_mtime for p in dumps), str(d)) for d in (base or Path(DEFAULT_DIRECTORY)).glob("*/")
            if d.is_dir() and not d.is_symlink() and (dumps := list(d.glob("*.jsonl")))]  # fmt: skip
    return max(runs)[1] if runs else None


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every recorded call completed on every rank, 1 when the records show a
    problem, 2 when there is no verdict to give (no records, several jobs and none chosen)."""
    parser = argparse.ArgumentParser(prog="python -m distcomm trace", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "directory", nargs="?",
        help="the run's flight-record directory (default: $DISTCOMM_FLIGHT_RECORDER_DIR, else the newest run in ./distcomm-flight-records)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument("--job", help="the job to read, where the directory holds records of several")
    args = parser.parse_args(argv)
    if args.directory is None:
        args.directory = newest_run()
        if args.directory is None:
            parser.error(f"no flight records in ${DIRECTORY_VARIABLE} or ./{DEFAULT_DIRECTORY}: name the directory")
    if not Path(args.directory).is_dir():
        parser.error(f"{args.directory} is not a directory")
    skipped: list[str] = []
    try:
        headers, calls = load(args.directory, args.job, skipped)
    except TraceError as error:
        print(error, file=sys.stderr)
        return 2
    for note in skipped:
        print(f"skipped {note}", file=sys.stderr)
    if not headers:
        wanted = f" of job {args.job!r}" if args.job else ""
        print(f"no flight records{wanted} (*.jsonl) in {args.directory}", file=sys.stderr)
        return 2
    verdict = analyse(headers, calls)
    print(json.dumps(verdict, indent=2) if args.json else render(verdict, args.directory))
    return 1 if has_problem(verdict) else 0
