"""``distcomm.spawn`` and ``LocalWorld``: a function on N local ranks, from a script, with each rank's
value back, or each failed rank's own error and traceback (a rank that could not start included)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from support import warm

import distcomm
from distcomm import RankFailure


def rank_and_sum(comm, offset: int) -> tuple[int, int]:
    return comm.rank, comm.all_reduce(comm.rank + offset)


def fails_on_rank_1(comm) -> int:
    if comm.rank == 1:
        raise ValueError("rank 1 is broken")
    return comm.rank


pytestmark = pytest.mark.integration


def test_spawn_returns_every_ranks_value() -> None:
    assert distcomm.spawn(rank_and_sum, 10, world_size=3, timeout=20) == [(0, 33), (1, 33), (2, 33)]


def test_a_failed_rank_is_named_with_its_traceback() -> None:
    with pytest.raises(RankFailure) as caught:
        distcomm.spawn(fails_on_rank_1, world_size=2, timeout=5)
    text = str(caught.value)
    assert "1 of 2 ranks failed" in text and "rank 1: ValueError: rank 1 is broken" in text and "fails_on_rank_1" in text


def run_script(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-"], input=textwrap.dedent(source), capture_output=True, text=True, timeout=120)


def test_a_function_the_ranks_cannot_load_is_named_as_the_cause() -> None:
    result = run_script('''
        import distcomm

        def train(comm):
            return comm.rank

        if __name__ == "__main__":
            try:
                distcomm.spawn(train, world_size=2, timeout=10)
            except distcomm.RankFailure as error:
                print(error)
    ''')
    assert "could not load the function to run" in result.stdout and "module level in a file" in result.stdout, result


def test_a_script_that_starts_ranks_at_import_is_told_what_to_do(tmp_path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text("import distcomm\n\ndef train(comm):\n    return comm.rank\n\nprint(distcomm.spawn(train, world_size=2, timeout=10))\n")
    result = warm.run([str(script)])
    assert result.returncode != 0 and 'if __name__ == "__main__":' in result.stderr + result.stdout, result


def frozen_objects(comm) -> bool:
    import gc

    return gc.get_freeze_count() > 0


def test_ranks_are_forked_from_a_server_whose_imports_are_frozen() -> None:
    # What each rank inherited is never scanned by its garbage collector, so its pages stay shared.
    assert distcomm.spawn(frozen_objects, world_size=2, timeout=20) == [True, True]
