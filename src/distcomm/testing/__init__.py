"""Test multi-rank code with real processes: persistent worlds of Gloo ranks, and pytest fixtures.

>>> from distcomm.testing import World
>>> with World(2) as world:
...     world.run(my_module.check_sum)   # my_module.check_sum(comm) runs on ranks 0 and 1
"""

from distcomm.errors import RankDiedError, RankFailure, RankTimeoutError
from distcomm.testing.world import RankOutcome, World, WorldPool

__all__ = ["RankDiedError", "RankFailure", "RankOutcome", "RankTimeoutError", "World", "WorldPool"]
