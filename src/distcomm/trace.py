"""``python -m distcomm trace DIR``: read every rank's flight record and say who is stuck where.

For each group of ranks it reports the last call every rank completed, the first call
where ranks' calls differ (operation, dtype, shape, reduce op or root), the ranks stuck
in a call and the ranks that never reached it, each with its call site; and the ranks
that left no record (killed, stopped, or never dumped). The files are plain JSON lines
(see :mod:`distcomm.flight_recorder`), so this reads them without torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def load(directory: str | Path) -> tuple[dict[int, Record], dict[int, list[Record]]]:
    """Every rank's dump header and call records in ``directory`` (the newest dump per rank)."""
    headers: dict[int, Record] = {}
    calls: dict[int, list[Record]] = {}
    for path in sorted(Path(directory).glob("*.jsonl")):
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            continue
        if not lines or lines[0].get("kind") != "header":
            continue
        header, rank = lines[0], int(lines[0]["rank"])
        if rank in headers and headers[rank].get("wall_time", 0) > header.get("wall_time", 0):
            continue
        headers[rank] = {**header, "path": str(path)}
        calls[rank] = [line for line in lines[1:] if line.get("kind") == "call"]
    return headers, calls


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
    for sequence in sorted(set.intersection(*(set(records) for records in by_rank.values()))):
        calls = {rank: by_rank[rank][sequence] for rank in ranks}
        if len({describe(call) for call in calls.values()}) > 1:
            divergence = {"seq": sequence, "calls": {rank: _call(call) for rank, call in calls.items()}}
            break
    unfinished = {
        rank: _call(records[reached[rank]]) for rank, records in by_rank.items() if records[reached[rank]]["state"] != "completed"
    }
    furthest = max(reached.values())
    behind = {rank: _call(by_rank[rank][reached[rank]]) for rank in ranks if reached[rank] < furthest}
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distcomm trace", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="the flight recorder's directory (default ./distcomm-flight-records)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    args = parser.parse_args(argv)
    if not Path(args.directory).is_dir():
        parser.error(f"{args.directory} is not a directory")
    headers, calls = load(args.directory)
    if not headers:
        print(f"no flight records (*.jsonl) in {args.directory}", file=sys.stderr)
        return 1
    verdict = analyse(headers, calls)
    print(json.dumps(verdict, indent=2) if args.json else render(verdict, args.directory))
    return 0
