"""``python -m distcomm trace``: the verdict from files alone, in words and as JSON."""

from __future__ import annotations

import json

import pytest

from distcomm.__main__ import main


def write(directory, rank, calls, world_size=3):
    header = {"kind": "header", "rank": rank, "world_size": world_size, "reason": "test", "wall_time": 1.0}
    lines = [header] + [
        {"kind": "call", "group": "0", "seq": seq, "op": op, "data": "float32[4]", "detail": detail, "file": "/x/train.py",
         "line": line, "function": "step", "state": state, "error": None}
        for seq, op, detail, line, state in calls
    ]  # fmt: skip
    (directory / f"job-rank{rank}.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_the_verdict_names_divergence_stuck_and_missing_ranks(tmp_path, capsys) -> None:
    write(tmp_path, 0, [(1, "all_reduce", "op=sum", 10, "completed"), (2, "all_reduce", "op=sum", 10, "started")])
    write(tmp_path, 1, [(1, "all_reduce", "op=sum", 10, "completed"), (2, "broadcast", "src=0", 12, "started")])
    assert main(["trace", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "rank(s) 2 left no record" in text
    assert "group '0': every rank completed calls up to #1" in text
    assert "ranks made different calls at #2: rank 0: all_reduce float32[4] op=sum at train.py:10 in step; " \
           "rank 1: broadcast float32[4] src=0 at train.py:12 in step" in text  # fmt: skip
    assert "rank 0 is stuck in all_reduce #2" in text
    assert main(["trace", str(tmp_path), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ranks_without_records"] == [2] and verdict["groups"][0]["first_difference"]["seq"] == 2


def test_a_rank_behind_the_others(tmp_path, capsys) -> None:
    write(tmp_path, 0, [(1, "barrier", "", 5, "completed"), (2, "all_reduce", "op=sum", 10, "started")], world_size=2)
    write(tmp_path, 1, [(1, "barrier", "", 5, "completed")], world_size=2)
    main(["trace", str(tmp_path)])
    text = capsys.readouterr().out
    assert "rank 1 never reached #2: its last call was barrier #1 (completed) at train.py:5 in step" in text


def test_clear_errors(tmp_path, capsys) -> None:
    assert main(["trace", str(tmp_path)]) == 1
    assert "no flight records" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["trace", str(tmp_path / "missing")])
    assert "is not a directory" in capsys.readouterr().err
