"""The join protocol over a real TCP store (the agent's kind), in one process: requests, the
live ranks' admission, and what a waiting newcomer reads. Forming the world takes real ranks:
tests/launch/test_agent.py."""

import datetime
import threading

import pytest
import torch.distributed as dist

from distcomm.errors import ConfigurationError, WireFormatError
from distcomm.wire import rejoin
from distcomm.wire.rejoin import Admission, JobStore


@pytest.fixture
def store() -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=datetime.timedelta(seconds=10))


def test_live_ranks_admit_every_request_once_in_seat_order(store: dist.TCPStore) -> None:
    newcomer = JobStore(store, seat=2)
    live = [JobStore(store, seat) for seat in (0, 1, 3)]
    assert [job.pending() for job in live] == [0, 0, 0]
    index = newcomer.request()
    assert index == 1 and all(job.pending() == 1 for job in live)
    admissions = [job.admit([0, 1, 3], through=1, timeout=5) for job in live]
    assert admissions == [Admission(1, (0, 1, 2, 3), (2,))] * 3  # one world for everyone
    assert newcomer.wait_admission(index, timeout=5) == admissions[0]
    assert [job.admitted for job in (*live, newcomer)] == [1, 1, 1, 1]


def test_a_seat_that_asks_while_it_is_live_is_not_counted_twice(store: dist.TCPStore) -> None:
    JobStore(store, seat=1).request()  # a stale request of a seat that is live again
    JobStore(store, seat=3).request()
    admission = JobStore(store, 0).admit([0, 1, 2], through=2, timeout=5)
    assert (admission.members, admission.joining) == ((0, 1, 2, 3), (3,))


def test_a_newcomer_waits_until_it_is_admitted(store: dist.TCPStore) -> None:
    newcomer = JobStore(store, seat=1)
    index = newcomer.request()
    seen: list[Admission | None] = []
    waiter = threading.Thread(target=lambda: seen.append(newcomer.wait_admission(index, timeout=10)))
    waiter.start()
    JobStore(store, 0).admit([0], through=1, timeout=5)
    waiter.join(10)
    assert seen == [Admission(1, (0, 1), (1,))]


def test_a_newcomer_ends_when_the_job_finished_first(store: dist.TCPStore) -> None:
    newcomer = JobStore(store, seat=1)
    index = newcomer.request()
    JobStore(store, 0).finish()
    assert newcomer.wait_admission(index, timeout=5) is None


def test_a_newcomer_nobody_admits_is_told_why_within_its_timeout(store: dist.TCPStore) -> None:
    newcomer = JobStore(store, seat=1)
    with pytest.raises(ConfigurationError, match="no live rank admitted it within 0.2 s: live ranks admit newcomers"):
        newcomer.wait_admission(newcomer.request(), timeout=0.2)


def test_a_malformed_admission_is_refused(store: dist.TCPStore) -> None:
    store.set("distcomm/job/join/admitted/1", "1")
    store.set("distcomm/job/admission/1", '{"members": [3, 1], "joining": []}')
    with pytest.raises(WireFormatError, match="malformed"):
        JobStore(store, 1).wait_admission(1, timeout=1)


def test_only_workers_of_the_distcomm_agent_look_for_newcomers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rejoin.LAUNCHER_VARIABLE, raising=False)
    monkeypatch.setenv(rejoin.JOIN_VARIABLE, "1")
    assert rejoin.job_store() is None and not rejoin.joining()
    monkeypatch.setenv(rejoin.LAUNCHER_VARIABLE, "distcomm")
    assert rejoin.joining()
    monkeypatch.setenv(rejoin.JOIN_TIMEOUT_VARIABLE, "soon")
    with pytest.raises(ConfigurationError, match="DISTCOMM_JOIN_TIMEOUT='soon' is not a number"):
        rejoin.join_timeout()


def test_the_agent_that_keeps_the_store_leaves_last(store: dist.TCPStore) -> None:
    keeper, other = JobStore(store, -1), JobStore(store, -1)
    left: list[str] = []
    waiting = threading.Thread(target=lambda: (keeper.leave(True, agents=2, timeout=10), left.append("keeper")))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()  # the other agent has not finished: its workers may still need the store
    other.leave(False, agents=2, timeout=10)
    waiting.join(10)
    assert left == ["keeper"]


def test_admit_outside_distcomm_run_returns_the_communicator_and_refuses_a_bad_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    from distcomm import InvalidArgumentError, LocalCommunicator

    monkeypatch.delenv(rejoin.LAUNCHER_VARIABLE, raising=False)
    comm = LocalCommunicator()
    assert comm.admit() is comm and comm.growth is None and not comm.closed
    with pytest.raises(InvalidArgumentError, match="admit: settle is a positive number of seconds, got 0"):
        comm.admit(0)
