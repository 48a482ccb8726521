"""The README's demo runs as a user runs it: a real job of local Gloo processes."""

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[1] / "examples" / "train_ddp.py"


def test_demo_trains_on_two_gloo_ranks_and_the_weights_agree() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "30"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "all 2 ranks hold identical weights" in done.stderr
    assert "trained on 2 Gloo ranks: OK" in done.stdout


def test_demo_runs_single_process_with_a_local_communicator() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE), "--world-size", "1", "--steps", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[local]" in done.stderr
