"""A helper for tests that switch distcomm behaviour through environment variables."""

import contextlib
import os
from collections.abc import Iterator

from distcomm import Communicator, get_communicator, set_communicator
from distcomm.launch.active import forget_default_group


@contextlib.contextmanager
def active_with_flag(name: str) -> Iterator[Communicator]:
    """The active communicator as it is resolved with ``name=1`` set; everything restored after."""
    os.environ[name] = "1"
    try:
        set_communicator(None)
        forget_default_group()
        yield get_communicator()
    finally:
        del os.environ[name]
        forget_default_group()
