"""``python -m distcomm trace``: the verdict from files alone, in words and as JSON."""

from __future__ import annotations

import json
import os

import pytest

from distcomm.__main__ import main


def write(directory, rank, calls, world_size=3, group="0"):
    header = {"kind": "header", "rank": rank, "world_size": world_size, "reason": "test", "wall_time": 1.0}
    lines = [header] + [
        {"kind": "call", "group": group, "seq": seq, "op": op, "data": "float32[4]", "detail": detail, "file": "/x/train.py",
         "line": line, "function": "step", "state": state, "error": None}
        for seq, op, detail, line, state in calls
    ]  # fmt: skip
    (directory / f"job-rank{rank}.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_the_verdict_names_divergence_stuck_and_missing_ranks(tmp_path, capsys) -> None:
    write(tmp_path, 0, [(1, "all_reduce", "op=sum", 10, "completed"), (2, "all_reduce", "op=sum", 10, "started")])
    write(tmp_path, 1, [(1, "all_reduce", "op=sum", 10, "completed"), (2, "broadcast", "src=0", 12, "started")])
    assert main(["trace", str(tmp_path)]) == 1  # it found a problem
    text = capsys.readouterr().out
    assert "rank(s) 2 left no record" in text
    assert "group '0': every rank completed calls up to #1" in text
    assert "ranks made different calls at #2: rank 0: all_reduce float32[4] op=sum at train.py:10 in step; " \
           "rank 1: broadcast float32[4] src=0 at train.py:12 in step" in text  # fmt: skip
    assert "rank 0 is stuck in all_reduce #2" in text
    assert main(["trace", str(tmp_path), "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ranks_without_records"] == [2] and verdict["groups"][0]["first_difference"]["seq"] == 2


def test_a_rank_behind_the_others(tmp_path, capsys) -> None:
    write(tmp_path, 0, [(1, "barrier", "", 5, "completed"), (2, "all_reduce", "op=sum", 10, "started")], world_size=2)
    write(tmp_path, 1, [(1, "barrier", "", 5, "completed")], world_size=2)
    assert main(["trace", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "rank 1 never reached #2: its last call was barrier #1 (completed) at train.py:5 in step" in text


def test_sends_and_receives_are_not_compared_across_ranks(tmp_path, capsys) -> None:
    write(tmp_path, 0, [(1, "send", "dst=1", 5, "completed"), (2, "send", "dst=1", 6, "completed")], world_size=2, group="0 (some ranks)")
    write(tmp_path, 1, [(1, "recv", "", 7, "completed")], world_size=2, group="0 (some ranks)")
    assert main(["trace", str(tmp_path)]) == 0  # different calls and counts by design
    assert "every recorded call completed on every rank" in capsys.readouterr().out
    write(tmp_path, 1, [(1, "recv", "", 7, "started")], world_size=2, group="0 (some ranks)")
    assert main(["trace", str(tmp_path)]) == 1
    assert "rank 1 is stuck in recv #1" in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys) -> None:
    assert main(["trace", str(tmp_path)]) == 2
    assert "no flight records" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["trace", str(tmp_path / "missing")])
    assert "is not a directory" in capsys.readouterr().err


def test_a_healthy_record_exits_zero(tmp_path, capsys) -> None:
    for rank in range(2):
        write(tmp_path, rank, [(1, "barrier", "", 5, "completed")], world_size=2)
    assert main(["trace", str(tmp_path)]) == 0
    assert "every recorded call completed on every rank" in capsys.readouterr().out


GOOD_CALL = {"kind": "call", "group": "0", "seq": 1, "op": "barrier", "data": "NoneType", "detail": "", "file": None,
             "line": None, "function": None, "state": "completed", "error": None, "duration_ms": 1.0}  # fmt: skip
HEADER = {"kind": "header", "rank": 1, "world_size": 2, "job": "job", "wall_time": 1.0}
HOSTILE = {
    "not json": "{oops",
    "no header": json.dumps(GOOD_CALL),
    "a list": "[1, 2]",
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "header without rank": json.dumps({**HEADER, "rank": None}),
    "rank beyond the world": json.dumps({**HEADER, "rank": 5}),
    "world of 10**12": json.dumps({**HEADER, "world_size": 10**12}),
    "boolean rank": json.dumps({**HEADER, "rank": True}),
    "job not text": json.dumps({**HEADER, "job": {"a": 1}}),
    "call without seq": json.dumps(HEADER) + "\n" + json.dumps({k: v for k, v in GOOD_CALL.items() if k != "seq"}),
    "seq of text": json.dumps(HEADER) + "\n" + json.dumps({**GOOD_CALL, "seq": "1"}),
    "seq zero": json.dumps(HEADER) + "\n" + json.dumps({**GOOD_CALL, "seq": 0}),
    "unknown state": json.dumps(HEADER) + "\n" + json.dumps({**GOOD_CALL, "state": "exploded"}),
    "nested op": json.dumps(HEADER) + "\n" + json.dumps({**GOOD_CALL, "op": [[["x"]]]}),
    "line of text": json.dumps(HEADER) + "\n" + json.dumps({**GOOD_CALL, "line": "ten"}),
    "duration of text": json.dumps(HEADER) + "\n" + json.dumps({**GOOD_CALL, "duration_ms": "fast"}),
    "binary": "\x00\xff\xfe garbage",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_dump_is_skipped_with_a_reason_and_the_rest_still_read(tmp_path, capsys, case: str) -> None:
    write(tmp_path, 0, [(1, "barrier", "", 5, "completed")], world_size=2)
    (tmp_path / "job-rank1.jsonl").write_text(HOSTILE[case])
    assert main(["trace", str(tmp_path)]) == 1  # rank 1 left no usable record: a problem
    captured = capsys.readouterr()
    assert "skipped job-rank1.jsonl:" in captured.err and "rank(s) 1 left no record" in captured.out


def test_links_fifos_and_devices_are_never_opened(tmp_path, capsys) -> None:
    write(tmp_path, 0, [(1, "barrier", "", 5, "completed")], world_size=2)
    (tmp_path / "job-rank1.jsonl").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "job-rank2.jsonl")  # reading it would block forever
    assert main(["trace", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("not a regular file") == 2


def test_records_of_several_jobs_are_never_mixed(tmp_path, capsys) -> None:
    write(tmp_path, 0, [(1, "barrier", "", 5, "completed")], world_size=2)
    other = {"kind": "header", "rank": 1, "world_size": 2, "job": "other", "wall_time": 2.0}
    (tmp_path / "other-rank1.jsonl").write_text(json.dumps(other) + "\n")
    assert main(["trace", str(tmp_path)]) == 2
    assert "records of 2 runs" in capsys.readouterr().err
    assert main(["trace", str(tmp_path), "--job", "other"]) == 1
    assert "rank(s) 0 left no record" in capsys.readouterr().out


def test_with_no_directory_it_reads_the_newest_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISTCOMM_FLIGHT_RECORDER_DIR", raising=False)
    with pytest.raises(SystemExit):  # nothing recorded yet: it asks for a directory
        main(["trace"])
    assert "no flight records" in capsys.readouterr().err
    old, new = tmp_path / "distcomm-flight-records" / "run-1", tmp_path / "distcomm-flight-records" / "run-2"
    old.mkdir(parents=True)
    new.mkdir()
    write(old, 0, [(1, "all_reduce", "op=sum", 10, "started")], world_size=1)
    write(new, 0, [(1, "all_reduce", "op=sum", 10, "completed")], world_size=1)
    os.utime(old / "job-rank0.jsonl", (1e9, 1e9))  # run-1's dump is the older
    assert main(["trace"]) == 0  # run-2: every call completed
    assert "run-2" in capsys.readouterr().out
    monkeypatch.setenv("DISTCOMM_FLIGHT_RECORDER_DIR", str(old))  # where the recorder was told to write
    assert main(["trace"]) == 1


def run_names(comm):
    from distcomm.environment.job import job_name

    return job_name()


@pytest.mark.integration  # a world of its own
def test_every_rank_of_a_run_shares_one_name_and_runs_differ() -> None:
    from distcomm.testing import World

    names = []
    for _ in range(2):
        with World(2, timeout=5.0) as world:
            names.append(world.run(run_names))
    assert names[0][0] == names[0][1] and names[1][0] == names[1][1] and names[0][0] != names[1][0]
    assert all(name.startswith("run-") for name in names[0] + names[1])
