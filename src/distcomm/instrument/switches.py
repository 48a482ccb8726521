"""The environment's switches for instrumentation: ``DISTCOMM_DEBUG=1`` checks every collective
(:class:`~distcomm.instrument.check_hook.CheckHook`), ``DISTCOMM_PROFILE=1`` times it
(:class:`~distcomm.instrument.profile_hook.ProfileHook`). Every communicator made while a switch
is on gets its hook when it is made, however it is made (``TorchDistCommunicator.init(...)``,
``TorchDistCommunicator()``, ``LocalCommunicator()``, :func:`~distcomm.setup`), and its splits
carry it on.

Tested by tests/instrument/test_switches.py.
"""

from __future__ import annotations

from typing import Any

from distcomm.environment.job import environment_flag
from distcomm.instrument.check_hook import CheckHook
from distcomm.instrument.hooks import Hook
from distcomm.instrument.profile_hook import ProfileHook

DEBUG, PROFILE = "DISTCOMM_DEBUG", "DISTCOMM_PROFILE"


def environment_hooks(comm: Any) -> tuple[Hook, ...]:
    """The hooks the environment asks ``comm`` (a communicator being made) to have."""
    hooks: list[Hook] = []
    if environment_flag(DEBUG):
        hooks.append(CheckHook(comm))
    if environment_flag(PROFILE):
        hooks.append(ProfileHook())
    return tuple(hooks)
