"""Pytest fixtures for testing code that talks to other ranks (registered via ``pytest11``).

* ``local_comm``: a fresh :class:`~distcomm.LocalCommunicator`.
* ``dist_world``: a factory, ``dist_world(4)`` gives a persistent :class:`World` of 4
  real Gloo ranks, shared by every test of the session (of this xdist worker).

Options (``pytest.ini`` / ``pyproject.toml``): ``distcomm_timeout`` bounds each
collective in a world (seconds), ``distcomm_call_timeout`` each call.

Tested by every multi-rank test, which uses its fixtures (tests/testing/test_world.py first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from distcomm.local import LocalCommunicator
from distcomm.testing.world import World, WorldPool


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("distcomm_timeout", "seconds a collective may take in a test world", default="15")
    parser.addini("distcomm_call_timeout", "seconds one World.run call may take", default="60")


@pytest.fixture(scope="session")
def distcomm_world_pool(pytestconfig: pytest.Config) -> Iterator[WorldPool]:
    """The session's worlds; closed when the session ends."""
    pool = WorldPool(
        timeout=float(pytestconfig.getini("distcomm_timeout")),
        call_timeout=float(pytestconfig.getini("distcomm_call_timeout")),
    )
    yield pool
    pool.close()


@pytest.fixture
def dist_world(distcomm_world_pool: WorldPool) -> Callable[..., World]:
    """``dist_world(n, backend="gloo")``: a persistent world of ``n`` real ranks."""
    return distcomm_world_pool.get


@pytest.fixture
def local_comm() -> LocalCommunicator:
    """A single-process communicator."""
    return LocalCommunicator()
