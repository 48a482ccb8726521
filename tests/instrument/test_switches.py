"""DISTCOMM_DEBUG and DISTCOMM_PROFILE reach every communicator when it is made, however it is made."""

from __future__ import annotations

import os

import pytest
import torch

from distcomm import CollectiveMismatchError, LocalCommunicator, TorchDistCommunicator
from distcomm.instrument.check_hook import CheckHook
from distcomm.instrument.profile_hook import ProfileHook


def hook_kinds(comm) -> set[str]:
    return {type(h).__name__ for h in comm.hooks}


def test_a_local_communicator_made_with_the_switches_on_has_their_hooks(monkeypatch) -> None:
    assert not hook_kinds(LocalCommunicator()) & {"CheckHook", "ProfileHook"}
    monkeypatch.setenv("DISTCOMM_DEBUG", "1")
    monkeypatch.setenv("DISTCOMM_PROFILE", "1")
    comm = LocalCommunicator()
    assert {"CheckHook", "ProfileHook"} <= hook_kinds(comm)
    comm.all_reduce(torch.ones(2))
    profile = next(h for h in comm.hooks if isinstance(h, ProfileHook))
    assert [op for op, _ in profile.stats] == ["all_reduce"]
    assert {"CheckHook", "ProfileHook"} <= hook_kinds(comm.split([0]))  # splits carry them on


def made_with_debug_on(comm):
    """A TorchDistCommunicator made while DISTCOMM_DEBUG=1, then ranks in different calls."""
    os.environ["DISTCOMM_DEBUG"] = "1"
    try:
        made = TorchDistCommunicator()  # over the job's default group, as TorchDistCommunicator.init(...) makes it
    finally:
        del os.environ["DISTCOMM_DEBUG"]
    assert any(isinstance(h, CheckHook) for h in made.hooks)
    try:
        made.all_reduce(torch.ones(3)) if made.rank == 0 else made.barrier()
    except CollectiveMismatchError as error:
        return str(error).split(": ", 1)[1]
    return "not caught"


def test_a_torch_dist_communicator_made_with_debug_on_checks_every_call(dist_world) -> None:
    zero, one = dist_world(2).run(made_with_debug_on)
    assert zero == one and "rank 0: all_reduce float32[3] op=sum; rank 1: barrier" in zero


@pytest.mark.parametrize("flag", ["0", ""])
def test_a_switch_that_is_off_attaches_nothing(monkeypatch, flag: str) -> None:
    monkeypatch.setenv("DISTCOMM_DEBUG", flag)
    assert "CheckHook" not in hook_kinds(LocalCommunicator())
