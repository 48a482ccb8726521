"""Reading what the launcher exported: rank, world size, local rank and the job's name."""

from __future__ import annotations

import pytest

from distcomm import ConfigurationError
from distcomm.environment.job import (
    MissingEnvironmentError,
    environment_flag,
    identity_from_environment,
    job_name,
    local_rank_from_environment,
    run_id,
)


def test_each_launcher_is_read_under_its_own_names() -> None:
    assert identity_from_environment({"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    assert identity_from_environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "6"}) == (5, 6)
    assert identity_from_environment({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}) == (1, 2)
    assert identity_from_environment({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "7", "SLURM_NTASKS": "9"}) == (0, 2)


def test_missing_or_malformed_variables_are_named() -> None:
    with pytest.raises(MissingEnvironmentError, match="RANK is set but WORLD_SIZE is not"):
        identity_from_environment({"RANK": "0"})
    with pytest.raises(ConfigurationError, match=r"RANK='x' is not an integer"):
        identity_from_environment({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(MissingEnvironmentError, match="no launcher exported them"):
        identity_from_environment({})


def test_local_rank_and_job_name() -> None:
    assert local_rank_from_environment(5, {"SLURM_LOCALID": "1"}) == 1
    assert local_rank_from_environment(5, {}) == 5  # one machine: the global rank
    assert job_name({"SLURM_JOB_ID": "123/4 x"}) == "123_4_x"
    assert job_name({}) == f"run-{run_id()}" and run_id()  # no launcher names the run: its own id
    assert job_name({"TORCHELASTIC_RUN_ID": "none"}) == f"run-{run_id()}"  # torchrun's default is no id
    assert job_name({"TORCHELASTIC_RUN_ID": "r7", "TORCHELASTIC_RESTART_COUNT": "2"}) == "r7-restart2"  # another run
    assert job_name({"DISTCOMM_JOB": "mine", "SLURM_JOB_ID": "1"}) == "mine"


@pytest.mark.parametrize(("word", "default", "expected"), [("1", False, True), ("Yes", False, True), ("off", True, False),
                                                           ("0", True, False), ("", True, True), ("maybe", False, False)])  # fmt: skip
def test_environment_flags(monkeypatch, word: str, default: bool, expected: bool) -> None:
    monkeypatch.setenv("DISTCOMM_TEST_FLAG", word)
    assert environment_flag("DISTCOMM_TEST_FLAG", default) is expected
