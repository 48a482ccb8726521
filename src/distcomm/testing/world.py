"""``World``: the :class:`~distcomm.launch.local_world.LocalWorld` of tests, and ``WorldPool``, the worlds a
test session keeps alive for reuse (the ``dist_world`` fixture of :mod:`distcomm.testing.plugin`).

Tested by tests/testing/test_world.py.
"""

from __future__ import annotations

from distcomm.launch.local_world import LocalWorld, RankOutcome

__all__ = ["RankOutcome", "World", "WorldPool"]


class World(LocalWorld):
    """A :class:`LocalWorld` for tests: short timeouts by default (15 s a collective, 60 s a call)."""

    def __init__(
        self, world_size: int, *, backend: str = "gloo", timeout: float = 15.0, call_timeout: float = 60.0, start_timeout: float = 120.0
    ) -> None:
        super().__init__(world_size, backend=backend, timeout=timeout, call_timeout=call_timeout, start_timeout=start_timeout)


class WorldPool:
    """Worlds kept alive for reuse, one per (world size, backend): a test session pays
    for starting ranks once, not once per test."""

    def __init__(self, *, timeout: float = 15.0, call_timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.call_timeout = call_timeout
        self._worlds: dict[tuple[int, str], World] = {}

    def get(self, world_size: int, backend: str = "gloo") -> World:
        """The pool's world of ``world_size`` ranks, started on first use."""
        key = (world_size, backend)
        if key not in self._worlds:
            self._worlds[key] = World(world_size, backend=backend, timeout=self.timeout, call_timeout=self.call_timeout)
        return self._worlds[key]

    def close(self) -> None:
        for world in self._worlds.values():
            world.close()
        self._worlds.clear()
