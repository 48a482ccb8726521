"""The flight recorder: real ranks that hang or fail leave records that name the rank, call and line."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from distcomm import (
    CollectiveError,
    FlightRecorder,
    Hook,
    LocalCommunicator,
    distutils,
    use_communicator,
)
from distcomm.cli.trace import analyse, load, render
from distcomm.environment.job import job_name
from distcomm.instrument import flight_recorder
from distcomm.instrument.hooks import Call
from distcomm.testing import World

TIMEOUT = 3.0
HERE = Path(__file__).name


def line_of(marker: str) -> int:
    """The line of this file that carries ``marker`` in a comment."""
    for number, text in enumerate(Path(__file__).read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# {marker}"):
            return number
    raise LookupError(marker)


@pytest.fixture(scope="module")
def world():
    with World(2, timeout=TIMEOUT, call_timeout=60.0) as w:
        yield w


def two_good_calls(comm, directory: str) -> None:
    comm.flight_recorder.directory = Path(directory)
    assert comm.flight_recorder.dump_on_signal("SIGUSR1")  # opt-in: its ranks dump on kill -USR1
    tensor = torch.ones(4)
    comm.all_reduce(tensor)
    comm.all_reduce(tensor)


def dump_by_signal(comm) -> None:
    """What an operator does to a rank that is still alive: ``kill -USR1`` (the world opted in)."""
    path = comm.flight_recorder.directory / f"{job_name()}-rank{comm.rank}.jsonl"
    before = path.stat().st_mtime_ns if path.exists() else None
    os.kill(os.getpid(), signal.SIGUSR1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not path.exists() or path.stat().st_mtime_ns == before):
        time.sleep(0.05)  # the listening thread writes it


def rank_1_skips(comm, directory: str):
    two_good_calls(comm, directory)
    if comm.rank == 0:
        comm.all_reduce(torch.ones(4))  # SKIPPED-BY-RANK-1
    else:
        time.sleep(TIMEOUT + 1.5)
        dump_by_signal(comm)


def ranks_call_different_collectives(comm, directory: str):
    """Both calls open with a slot that names them, so both ranks fail at once, then dump."""
    two_good_calls(comm, directory)
    try:
        if comm.rank == 0:
            comm.all_reduce({"loss": torch.ones(4)})  # RANK-0-REDUCES
        else:
            comm.broadcast(torch.ones(4), src=0)  # RANK-1-BROADCASTS
    finally:
        comm.dump_flight_record("test")


def rank_1_stops_or_dies(comm, directory: str, how: str):
    pids = comm.all_gather_object(os.getpid())
    two_good_calls(comm, directory)
    if comm.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP if how == "stop" else signal.SIGKILL)
    try:
        comm.all_reduce(torch.ones(4))  # WAITS-FOR-RANK-1
    finally:
        if how == "stop":
            os.kill(pids[1], signal.SIGKILL)  # the test's clean-up: nothing could be read from a stopped rank


def verdict_of(directory: Path) -> dict:
    headers, calls = load(directory)
    return analyse(headers, calls)


def wait_for_files(directory: Path, count: int, seconds: float) -> float:
    start = time.monotonic()
    while len(list(directory.glob("*.jsonl"))) < count and time.monotonic() - start < seconds:
        time.sleep(0.1)
    return time.monotonic() - start


def test_a_rank_that_skips_a_collective_is_named(world, tmp_path) -> None:
    outcomes = world.run_outcomes(rank_1_skips, str(tmp_path))
    assert isinstance(outcomes[0].error, CollectiveError) and outcomes[1].ok
    names = sorted(p.name for p in tmp_path.glob("*.jsonl"))  # one run: one name, agreed by the ranks
    assert len(names) == 2 and names[0].startswith("run-") and names[1] == names[0].replace("rank0", "rank1")
    assert f"{int(TIMEOUT * 1000)}ms" in str(outcomes[0].error)  # it failed by its group's own timeout
    verdict = verdict_of(tmp_path)
    (group,) = verdict["groups"]
    stuck = group["unfinished"][0]
    assert stuck["op"] == "all_reduce" and stuck["state"] == "failed" and stuck["line"] == line_of("SKIPPED-BY-RANK-1")
    assert list(group["behind"]) == [1] and group["behind"][1]["state"] == "completed"
    assert group["all_completed_up_to"] == group["furthest_call"] - 1 and group["first_difference"] is None
    text = render(verdict, str(tmp_path))
    assert f"rank 1 never reached #{group['furthest_call']}" in text
    assert f"rank 0 failed in all_reduce #{group['furthest_call']} (all_reduce float32[4] op=sum at {HERE}:{line_of('SKIPPED-BY-RANK-1')}" in text


def test_ranks_that_call_different_collectives_are_shown_side_by_side(world, tmp_path) -> None:
    outcomes = world.run_outcomes(ranks_call_different_collectives, str(tmp_path))
    assert [type(o.error).__name__ for o in outcomes] == ["InconsistentInputError"] * 2
    group = verdict_of(tmp_path)["groups"][0]
    difference = group["first_difference"]
    assert difference["seq"] == group["all_completed_up_to"] + 1
    calls = difference["calls"]
    assert (calls[0]["op"], calls[0]["detail"], calls[0]["line"]) == ("all_reduce", "op=sum", line_of("RANK-0-REDUCES"))
    assert (calls[1]["op"], calls[1]["detail"], calls[1]["line"]) == ("broadcast", "src=0", line_of("RANK-1-BROADCASTS"))
    text = render(verdict_of(tmp_path), str(tmp_path))
    assert "ranks made different calls at" in text and "rank 1: broadcast float32[4] src=0 at" in text
    assert "rank 0: all_reduce dict op=sum at" in text


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_stopped_or_killed_rank_is_named(world, tmp_path, how) -> None:
    started = time.monotonic()
    outcomes = world.run_outcomes(rank_1_stops_or_dies, str(tmp_path), how)
    assert isinstance(outcomes[0].error, CollectiveError)
    assert wait_for_files(tmp_path, 1, 5) < 5 and time.monotonic() - started < TIMEOUT + 15
    verdict = verdict_of(tmp_path)
    assert verdict["ranks_without_records"] == [1] and verdict["world_size"] == 2
    stuck = verdict["groups"][0]["unfinished"][0]
    assert stuck["op"] == "all_reduce" and stuck["line"] == line_of("WAITS-FOR-RANK-1")
    assert "rank(s) 1 left no record" in render(verdict, str(tmp_path))


# ------------------------------------------------------------------ one process


def test_a_world_of_one_and_the_facade_are_recorded(tmp_path) -> None:
    comm = LocalCommunicator()
    recorder = FlightRecorder(size=3, directory=tmp_path)
    comm.register_hook(recorder)
    with use_communicator(comm):
        distutils.all_reduce(torch.ones(2))  # FACADE-CALL
        comm.broadcast_object("x", src=0)
        comm.all_reduce({"a": 1.0}, "mean")
        comm.barrier()
    records = recorder.records()
    assert [r["op"] for r in records] == ["broadcast_object", "all_reduce", "barrier"]  # the ring keeps 3
    assert [r["seq"] for r in records] == [2, 3, 4] and records[0]["detail"] == "src=0" and records[1]["data"] == "dict"
    path = comm.dump_flight_record("test")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["reason"] == "test" and len(lines) == 4
    recorder.entries.clear()
    distutils.all_reduce(torch.ones(2))  # not in a use_communicator block: the active communicator records elsewhere
    with use_communicator(comm):
        distutils.all_reduce(torch.ones(2))  # FACADE-CALL-2
    (record,) = recorder.records()
    assert (record["file"], record["line"], record["function"]) == (
        __file__, line_of("FACADE-CALL-2"), "test_a_world_of_one_and_the_facade_are_recorded"
    )


def test_a_failed_dump_never_raises(tmp_path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    recorder = FlightRecorder(directory=blocked)
    assert recorder.dump() is None


def test_the_watchdog_dumps_a_call_in_flight_too_long(tmp_path) -> None:
    recorder = FlightRecorder(directory=tmp_path, watchdog_seconds=0.3)
    waited: list[float] = []

    class Stuck(Hook):  # inside the call, after the recorder noted its start: wait for the watchdog's dump
        def before(self, call: Call) -> None:
            waited.append(wait_for_files(tmp_path, 1, 5))

    comm = LocalCommunicator()
    comm.register_hook(recorder)
    comm.register_hook(Stuck())
    comm.all_reduce(torch.ones(1), "max")
    assert waited[0] < 5
    (record,) = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()][1:]
    assert (record["state"], record["op"], record["detail"], record["data"]) == ("started", "all_reduce", "op=max", "float32[1]")
    assert [r["state"] for r in recorder.records()] == ["completed"]


def test_it_can_be_switched_off(monkeypatch) -> None:
    monkeypatch.setattr(flight_recorder, "_default", None)
    monkeypatch.setenv("DISTCOMM_FLIGHT_RECORDER", "0")
    comm = LocalCommunicator()
    assert comm.flight_recorder is None and comm.dump_flight_record() is None and comm.hooks == ()
    assert comm.all_reduce(torch.ones(1)).tolist() == [1.0] and flight_recorder._default is None  # nothing was made


def test_a_bad_size_or_signal_is_a_clear_error_or_a_warning(monkeypatch, caplog) -> None:
    monkeypatch.setenv(flight_recorder.SIZE_VARIABLE, "9" * 40)
    assert flight_recorder._size_from_environment() == flight_recorder.DEFAULT_SIZE
    assert "is not a number of calls" in caplog.text
    with pytest.raises(ValueError, match="no signal is named 'SIGNOPE'"):
        FlightRecorder(dump_signal="SIGNOPE")


def test_a_dump_follows_no_planted_link_and_only_its_owner_reads_it(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DISTCOMM_JOB", raising=False)
    for name in ("SLURM_JOB_ID", "LSB_JOBID", "TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    records = tmp_path / "records"
    records.mkdir()
    (records / f"{job_name()}-rank0.jsonl").symlink_to(victim)  # planted where the dump goes
    path = FlightRecorder(directory=records).dump("test")
    assert path == records / f"{job_name()}-rank0.jsonl" and not path.is_symlink() and victim.read_text() == "precious"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in records.iterdir()] == [f"{job_name()}-rank0.jsonl"]  # no temporary file left behind
    linked = tmp_path / "linked"
    linked.symlink_to(records)
    assert FlightRecorder(directory=linked).dump("test") is None  # a directory that is a link is refused


def test_a_default_directory_whose_parent_is_a_link_or_anothers_is_refused(tmp_path, monkeypatch, caplog) -> None:
    """The shared working directory holds a ``distcomm-flight-records`` planted by someone else: a link
    to their directory, or a directory of theirs. No dump goes there, and the log says why."""
    monkeypatch.delenv(flight_recorder.DIRECTORY_VARIABLE, raising=False)
    monkeypatch.setenv("DISTCOMM_JOB", "run-8")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.chdir(shared)
    (shared / "distcomm-flight-records").symlink_to(theirs)
    assert FlightRecorder().dump("test") is None and list(theirs.iterdir()) == []
    assert "is a link or not a directory" in caplog.text
    if os.geteuid() == 0:  # only root can plant a directory that belongs to another user
        (shared / "distcomm-flight-records").unlink()
        planted = shared / "distcomm-flight-records"
        planted.mkdir(mode=0o777)
        os.chown(planted, 65534, 65534)
        assert FlightRecorder().dump("test") is None and list(planted.iterdir()) == []
        assert "belongs to another user" in caplog.text


def test_by_default_each_job_dumps_into_its_own_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(flight_recorder.DIRECTORY_VARIABLE, raising=False)
    monkeypatch.setenv("DISTCOMM_JOB", "run-7")
    recorder = FlightRecorder()
    assert recorder.directory == tmp_path / "distcomm-flight-records" / "run-7"
    path = recorder.dump("test")
    assert path is not None and path.parent == recorder.directory and recorder.directory.stat().st_mode & 0o777 == 0o700
