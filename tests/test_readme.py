"""The README's quick start is what CI runs."""

import re
from pathlib import Path

import pytest

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


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WORLD_SIZE_WORDS = re.compile(r"^# .*(any world size|\d\+? ranks?\b)")


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_the_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 10 * 1024
    for link in re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text()):
        assert (ROOT / link).is_file(), link


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_snippet_says_the_world_size_it_needs(path: Path) -> None:
    for block in python_blocks(path):
        assert WORLD_SIZE_WORDS.match(block.splitlines()[0]), f"{path.name}: a snippet without its world size: {block[:80]!r}"


@pytest.mark.integration
def test_the_readmes_snippets_run_as_written(tmp_path, monkeypatch) -> None:
    """The trainer, its single-process test and its 3-rank test, as one module the ranks can import."""
    (tmp_path / "readme_snippets.py").write_text("\n\n".join(python_blocks(ROOT / "README.md")))
    monkeypatch.syspath_prepend(str(tmp_path))
    import readme_snippets  # noqa: PLC0415 (written just above)

    readme_snippets.test_a_step_returns_the_metrics()
    readme_snippets.test_every_rank_gets_the_same_metrics()
