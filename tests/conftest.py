"""Shared test settings: multi-rank tests use the ``dist_world`` fixture of distcomm's pytest plugin."""

import logging
import os

import pytest

logging.getLogger("distcomm").setLevel(logging.DEBUG)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core and two more. Real-job tests spend much of their time
    waiting (for a timeout to name a dead rank, for a peer process, for a replacement to
    rejoin), which the extra workers fill (on 2 cores: 75 s with 4 workers, 82 s with 3, 77 s with 5)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores + 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Real-job tests first on every worker: ``--dist worksteal`` hands each worker one contiguous
    share of the list, so each share is laid out as its part of the real-job tests, then its part
    of the quick ones. The quick ones then fill the workers' gaps, instead of one worker holding
    every long job (and starting the last of them when the others are done)."""
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    long = [item for item in items if item.get_closest_marker("integration") is not None]
    quick = [item for item in items if item.get_closest_marker("integration") is None]
    items[:] = [item for share in range(workers) for item in (*long[share::workers], *quick[share::workers])]
