"""The README's demo runs as a user runs it: a real job of local Gloo processes."""

import subprocess
import sys
from pathlib import Path

import pytest
from support import warm

pytestmark = pytest.mark.integration  # real jobs or subprocesses: left out of the fast loop

EXAMPLES = Path(__file__).parents[1] / "examples"
EXAMPLE = EXAMPLES / "train_ddp.py"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python examples/<name> ARGS`` in a warm process; it must succeed."""
    done = warm.run([str(EXAMPLES / name), *args])
    assert done.returncode == 0, done.stderr
    return done


def test_demo_trains_on_two_gloo_ranks_and_the_weights_agree() -> None:
    # The README's quick start, exactly as a user types it: a cold interpreter.
    done = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "30"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "all 2 ranks hold identical weights" in done.stderr
    assert "trained on 2 Gloo ranks: OK" in done.stdout


def test_demo_runs_single_process_with_a_local_communicator() -> None:
    done = run_example("train_ddp.py", "--world-size", "1", "--steps", "3")
    assert "[local]" in done.stderr


def test_the_demo_chooses_nccl_and_gpus_only_where_there_are_enough() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_ddp", EXAMPLE)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.choose("auto", "auto", 8, 8) == ("nccl", "cuda")
    assert demo.choose("auto", "auto", 2, 0) == ("gloo", "cpu")
    assert demo.choose("auto", "auto", 2, 1) == ("gloo", "cpu")  # two ranks, one GPU: NCCL would refuse
    assert demo.choose("auto", "cpu", 8, 8) == ("gloo", "cpu")
    assert demo.choose("gloo", "cuda", 2, 1) == ("gloo", "cuda")
    for args, message in ((("nccl", "auto", 2, 1), "one GPU per rank"), (("gloo", "cuda", 2, 0), "needs a CUDA GPU")):
        try:
            demo.choose(*args)
        except SystemExit as error:
            assert message in str(error)
        else:
            raise AssertionError(f"{args} should have been refused")


def test_graph_parallel_example_matches_one_process_on_a_two_by_two_mesh() -> None:
    done = run_example("graph_parallel.py", "--steps", "6")
    assert "dp=2 x gp=2: every step's loss equals the single-process run's" in done.stderr
    assert "losses match one process: OK" in done.stdout


def test_resilient_example_loses_a_worker_takes_its_replacement_back_and_finishes_with_the_same_losses() -> None:
    # Rank 0 of one agent's 4 workers: the store is the agent's, so the job goes on without it.
    done = run_example("resilient_training.py", "--steps", "10", "--kill-rank", "0", "--kill-step", "4")
    assert "worker 0 ended with signal SIGKILL; starting it again (restart 1 of 3)" in done.stderr
    assert "lost seat(s) [0] at step(s) [4]" in done.stderr and "seat(s) [0] rejoined; finished" in done.stderr
    assert "worker 0 was killed at step 4, started again and rejoined; 4 ranks finished with the same losses: OK" in done.stdout
