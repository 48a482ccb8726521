"""Helpers over the active communicator or one passed: rank_zero_only, main_process_first,
split_between_ranks, any_rank, all_ranks; on 4 real ranks and in one process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import distcomm
from distcomm import InvalidArgumentError


@distcomm.rank_zero_only
def report(value):
    return f"logged {value}"


def helpers(comm, marker_dir):
    marker = Path(marker_dir) / "ready"
    with distcomm.main_process_first():
        if comm.rank == 0:
            time.sleep(0.2)
            marker.write_text("cached")
        seen_cache = marker.exists()
    share = distcomm.split_between_ranks(list(range(10)))
    return (
        report(comm.rank),
        seen_cache,
        share,
        distcomm.any_rank(comm.rank == 2),
        distcomm.all_ranks(comm.rank < 4),
        distcomm.all_ranks(comm.rank < 2),
        distcomm.split_between_ranks(torch.arange(3)).tolist(),
    )


def test_helpers_on_four_ranks(dist_world, tmp_path: Path) -> None:
    results = dist_world(4).run(helpers, str(tmp_path))
    assert [r[0] for r in results] == ["logged 0", None, None, None]
    assert all(r[1] for r in results), "every rank sees what rank 0 made first"
    assert [r[2] for r in results] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert all(r[3:6] == (True, True, False) for r in results)
    assert [r[6] for r in results] == [[0], [1], [2], []]


def test_helpers_single_process(local_comm) -> None:
    assert report(1) == "logged 1"
    with distcomm.main_process_first(local_comm):
        pass
    assert distcomm.split_between_ranks((1, 2, 3), local_comm) == (1, 2, 3)
    assert distcomm.any_rank(True, local_comm) and not distcomm.all_ranks(False, local_comm)
    with pytest.raises(InvalidArgumentError, match="sliceable sequence"):
        distcomm.split_between_ranks({1, 2}, local_comm)  # type: ignore[arg-type]
