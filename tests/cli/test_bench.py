"""``python -m distcomm bench``: options, sizes, and a real (tiny) run."""

import subprocess
import sys

import pytest
import torch
from support import warm

from distcomm import InvalidArgumentError
from distcomm.cli.bench import calls_for, format_size, parse_size

pytestmark = pytest.mark.integration  # real jobs or subprocesses: left out of the fast loop


@pytest.mark.parametrize(("text", "size"), [("4", 4), ("64K", 65536), ("1M", 2**20), ("1MiB", 2**20), ("2 gb", 2 * 2**30)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_and_formatting() -> None:
    with pytest.raises(InvalidArgumentError, match="cannot read the size"):
        parse_size("lots")
    assert [format_size(s) for s in (4, 1024, 2**20, 3000)] == ["4 B", "1 KiB", "1 MiB", "3000 B"]
    assert calls_for(4) == 2000 and calls_for(2**30) == 50


def test_a_real_run_prints_a_table_and_progress() -> None:
    done = warm.run(["-m", "distcomm", "bench", "--ranks", "2", "--ops", "all_reduce,broadcast", "--sizes", "4,1K", "--calls", "20"], timeout=180)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("algbw" in line and "ratio" in line for line in lines)
    rows = [line.split() for line in lines if line.strip().startswith(("all_reduce", "broadcast"))]
    assert [(r[0], r[1] + r[2]) for r in rows] == [("all_reduce", "4B"), ("all_reduce", "1KiB"), ("broadcast", "4B"), ("broadcast", "1KiB")]
    assert all(float(r[-1]) > 0 and float(r[-3]) > 0 for r in rows)
    assert "[4/4] broadcast 1 KiB x 20" in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ops", "all_to_all"], "unknown op 'all_to_all'"),
        (["--sizes", "3X"], "cannot read the size '3X'"),
        (["--backend", "nccl"] if not torch.cuda.is_available() else ["--backend", "nccl", "--ranks", "64"], "one CUDA GPU per rank"),
        (["--ranks", "0"], "positive numbers"),
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys) -> None:
    from distcomm.cli.bench import main

    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2 and message in capsys.readouterr().err


def test_bench_emits_no_torch_deprecation_warning() -> None:
    """torch 2.13 deprecates all_gather_into_tensor: nothing distcomm runs may print that warning."""

    script = (
        "import warnings; warnings.simplefilter('error', FutureWarning)\n"
        "from distcomm.cli.bench import main\n"
        "raise SystemExit(main(['--ranks', '1', '--ops', 'all_gather_same,all_gather,dict_all_reduce', '--sizes', '4', '--calls', '3']))\n"
    )
    result = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "FutureWarning" not in result.stderr, result.stderr[-2000:]
