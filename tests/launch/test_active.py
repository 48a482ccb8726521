"""The active communicator: explicit, scoped, and following torch.distributed's default group."""

from __future__ import annotations

import threading

import pytest
import torch.distributed as dist

from distcomm import (
    InvalidArgumentError,
    LocalCommunicator,
    TorchDistCommunicator,
    get_communicator,
    set_communicator,
    use_communicator,
)


@pytest.fixture(autouse=True)
def nothing_set():
    previous = set_communicator(None)
    yield
    set_communicator(previous)


def test_without_a_group_it_is_local() -> None:
    assert isinstance(get_communicator(), LocalCommunicator)


def test_set_communicator_returns_the_previous_one() -> None:
    first, second = LocalCommunicator(), LocalCommunicator()
    assert set_communicator(first) is None
    assert get_communicator() is first
    assert set_communicator(second) is first
    assert get_communicator() is second


def test_use_communicator_nests_and_restores_even_on_error() -> None:
    outer, inner = LocalCommunicator(), LocalCommunicator()
    with use_communicator(outer):
        with pytest.raises(KeyError):
            with use_communicator(inner):
                assert get_communicator() is inner
                raise KeyError
        assert get_communicator() is outer
    assert isinstance(get_communicator(), LocalCommunicator) and get_communicator() is not outer


def test_use_communicator_is_per_thread() -> None:
    mine = LocalCommunicator()
    seen: list[object] = []
    inside, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        inside.wait(5)
        seen.append(get_communicator())
        release.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with use_communicator(mine):
        inside.set()
        release.wait(5)
        assert get_communicator() is mine
    thread.join()
    assert seen and seen[0] is not mine


def test_only_communicators_are_accepted() -> None:
    with pytest.raises(InvalidArgumentError, match="expected a Communicator, got str"):
        set_communicator("gloo")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        with use_communicator(None):  # type: ignore[arg-type]
            pass


def test_follows_a_group_created_directly_with_init_process_group(tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/a", rank=0, world_size=1)
    try:
        followed = get_communicator()
        assert isinstance(followed, TorchDistCommunicator) and followed.group is dist.group.WORLD
        assert get_communicator() is followed, "the follower is cached while the group lives"
        assert followed.all_reduce([1, 2]) == [1, 2]
    finally:
        dist.destroy_process_group()
    assert isinstance(get_communicator(), LocalCommunicator)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/b", rank=0, world_size=1)
    try:
        assert get_communicator() is not followed and get_communicator().group is dist.group.WORLD
    finally:
        dist.destroy_process_group()


def follow_in_world(comm):
    set_communicator(None)
    with use_communicator(LocalCommunicator()):
        scoped = get_communicator().world_size
    followed = get_communicator()
    return scoped, type(followed).__name__, followed.world_size, followed.all_reduce(1)


def test_in_a_real_world_the_default_group_is_followed(dist_world) -> None:
    assert dist_world(2).run(follow_in_world) == [(1, "TorchDistCommunicator", 2, 2)] * 2


def the_active_one_is_inits_own(comm):
    import distcomm
    from distcomm import RestrictedCodec

    comm.object_codec = RestrictedCodec()
    active = distcomm.get_communicator()
    return active.tensor_backend is comm.tensor_backend, type(active.object_codec).__name__


def test_code_that_follows_the_default_group_talks_through_inits_communicator(dist_world) -> None:
    assert dist_world(2).run(the_active_one_is_inits_own) == [(True, "RestrictedCodec")] * 2
