"""The pytest plugin's fixtures: a LocalCommunicator, and worlds shared by the session."""

from __future__ import annotations

from distcomm import LocalCommunicator


def test_local_comm_is_a_fresh_world_of_one(local_comm) -> None:
    assert isinstance(local_comm, LocalCommunicator) and local_comm.world_size == 1 and not local_comm.closed


def test_dist_world_gives_the_same_world_for_the_same_size(dist_world) -> None:
    assert dist_world(2) is dist_world(2) and dist_world(2).world_size == 2
