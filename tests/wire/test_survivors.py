"""The survivors' agreement through a store, in one process: ranks as threads over a real torch store."""

from __future__ import annotations

import datetime
import subprocess
import sys
import threading
import time

import pytest
import torch.distributed as dist

from distcomm import CollectiveError, ExcludedRankError
from distcomm.errors import WireFormatError
from distcomm.wire.survivors import arrive, confirm_formed, decide_survivors


def agree_in_threads(store, ranks, world_size, window, delays=None):
    results: dict[int, object] = {}

    def run(rank: int) -> None:
        time.sleep((delays or {}).get(rank, 0.0))
        try:
            results[rank] = decide_survivors(store, "job", 0, rank, world_size, window=window, note=str(rank * 10))
        except Exception as error:  # noqa: BLE001
            results[rank] = error

    threads = [threading.Thread(target=run, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_everyone_arriving_ends_the_wait_at_once() -> None:
    started = time.monotonic()
    results = agree_in_threads(dist.HashStore(), range(4), 4, window=30)
    assert time.monotonic() - started < 5
    assert {r: m.survivors for r, m in results.items()} == {r: (0, 1, 2, 3) for r in range(4)}
    assert results[2].note_of(3) == "30"


def test_ranks_that_never_arrive_are_left_out_and_every_survivor_agrees() -> None:
    for _ in range(5):  # racing deciders: one proposal wins, every rank reads the same
        results = agree_in_threads(dist.HashStore(), [0, 2, 3], 4, window=0.2)
        assert {m.survivors for m in results.values()} == {(0, 2, 3)}


def test_a_rank_that_comes_after_the_decision_is_excluded() -> None:
    results = agree_in_threads(dist.HashStore(), [0, 1, 2], 3, window=0.2, delays={2: 1.0})
    assert results[0].survivors == results[1].survivors == (0, 1)
    assert isinstance(results[2], ExcludedRankError) and "rank 2 is not among the survivors [0, 1]" in str(results[2])


def test_a_rank_counted_in_then_gone_stays_in_that_generation() -> None:
    store = dist.HashStore()
    arrive(store, "job", 0, 1)  # then it dies: the next generation leaves it out
    results = agree_in_threads(store, [0], 2, window=5)
    assert results[0].survivors == (0, 1)


def test_a_group_counts_as_formed_only_when_every_member_says_so() -> None:
    store = dist.HashStore()
    results: dict[int, bool] = {}
    threads = [threading.Thread(target=lambda r=r: results.__setitem__(r, confirm_formed(store, "job", 0, 2, 5.0))) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {0: True, 1: True}
    started = time.monotonic()
    assert confirm_formed(store, "job", 1, 2, 0.3) is False  # the other member never formed it
    assert 0.3 <= time.monotonic() - started < 5


def test_a_malformed_membership_is_a_wire_format_error() -> None:
    store = dist.HashStore()
    store.set("job/0/members", "[not json")
    with pytest.raises(WireFormatError, match="malformed"):
        decide_survivors(store, "job", 0, 0, 2, window=1)


HOST_A_STORE = (
    "import time, torch.distributed as dist\n"
    "store = dist.TCPStore('127.0.0.1', 0, is_master=True, wait_for_workers=False)\n"
    "print(store.port, flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_store_whose_host_died_names_the_cause() -> None:
    host = subprocess.Popen([sys.executable, "-c", HOST_A_STORE], stdout=subprocess.PIPE, text=True)
    try:
        port = int(host.stdout.readline())  # type: ignore[union-attr]
        client = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=3))
        client.set("warm", "1")
    finally:
        host.kill()
        host.wait(30)
    with pytest.raises(CollectiveError, match="store cannot be reached .* torchrun"):
        decide_survivors(client, "job", 0, 1, 2, window=1)
