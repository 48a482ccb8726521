"""The flight-record format: what the recorder writes is what ``trace`` reads, field by field."""

from __future__ import annotations

import json

import torch

from distcomm import FlightRecorder, LocalCommunicator
from distcomm.cli.trace import read_dump
from distcomm.instrument.record_format import CALL, CALL_FIELDS, HEADER, STATES


def test_a_dump_has_a_header_then_calls_with_every_field_of_the_format(tmp_path) -> None:
    recorder = FlightRecorder(directory=tmp_path)
    comm = LocalCommunicator()
    comm.register_hook(recorder)
    comm.all_reduce(torch.ones(2))
    comm.barrier()
    path = recorder.dump("test")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["kind"] == HEADER and all(line["kind"] == CALL for line in lines[1:]) and len(lines) == 3
    for call in lines[1:]:
        assert set(CALL_FIELDS) <= set(call) and call["state"] in STATES
        assert all(isinstance(call[field], kinds) for field, kinds in CALL_FIELDS.items())
    header, calls = read_dump(path)  # the reader accepts exactly what the writer wrote
    assert header["rank"] == 0 and [c["op"] for c in calls] == ["all_reduce", "barrier"]
