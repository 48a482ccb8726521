"""The README's quick start is what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def quick_start_commands() -> list[str]:
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no quick start block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    install_and_demo, install_and_test = quick_start_commands()
    assert "torch==2.13.0" in install_and_demo and "examples/train_ddp.py" in install_and_demo
    assert "torch==2.13.0" in install_and_test and "pytest -n auto" in install_and_test
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci_lines
