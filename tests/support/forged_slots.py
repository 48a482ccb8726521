"""Slots as a forged peer would send them: distcomm's opening prefix around any body."""

from __future__ import annotations

import numpy as np
import torch

from distcomm.wire.call_check import MAGIC, TAG_BYTES, slot_bytes


def forged_slot(world_size: int, tag: str, body: bytes, *, magic: bytes = MAGIC, announced: int | None = None) -> torch.Tensor:
    """One opening slot for a world of ``world_size``: ``magic``, ``tag``, the body size
    (``announced``, else the body's length) and ``body``, cut to the slot."""
    size = slot_bytes(world_size)
    length = len(body) if announced is None else announced
    raw = magic + tag.encode().ljust(TAG_BYTES, b"\0")[:TAG_BYTES] + length.to_bytes(8, "little", signed=True) + body
    slot = np.zeros(size, dtype=np.uint8)
    raw = raw[:size]
    slot[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return torch.from_numpy(slot)
