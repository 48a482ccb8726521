"""Openings as a forged peer would send them: a check that matches nobody's, then a slot around any body."""

from __future__ import annotations

import numpy as np
import torch

from distcomm.wire.call_check import MAGIC, TAG_BYTES, slot_bytes


def forged_slot(world_size: int, tag: str, body: bytes, *, magic: bytes = MAGIC, announced: int | None = None) -> torch.Tensor:
    """One second-step slot for a world of ``world_size``: ``magic``, ``tag``, the body size
    (``announced``, else the body's length) and ``body``, cut to the slot."""
    size = slot_bytes(world_size)
    length = len(body) if announced is None else announced
    raw = magic + tag.encode().ljust(TAG_BYTES, b"\0")[:TAG_BYTES] + length.to_bytes(8, "little", signed=True) + body
    slot = np.zeros(size, dtype=np.uint8)
    raw = raw[:size]
    slot[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return torch.from_numpy(slot)


def forged_check() -> torch.Tensor:
    """A check no honest rank sends (a first word with no one-bits, where every honest code word
    has 32), so every rank takes the second step, where the forged slot follows."""
    return torch.tensor([0, -1], dtype=torch.int64)


def send_forged_opening(comm, tag: str, body: bytes, *, magic: bytes = MAGIC, announced: int | None = None) -> None:  # type: ignore[no-untyped-def]
    """As one rank of ``comm``: the opening of call ``tag`` with a forged slot carrying ``body``."""
    comm.tensor_backend.all_reduce_bitwise_and(forged_check())
    comm.tensor_backend.all_gather(forged_slot(comm.world_size, tag, body, magic=magic, announced=announced))


def forge_next_opening(comm, slot: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    """Make this rank's next opening send ``slot`` in its second step, whatever its call: its check
    matches no honest rank's, so every rank takes that step."""
    backend = comm.tensor_backend

    def check_once(tensor: torch.Tensor) -> None:
        del backend.all_reduce_bitwise_and
        tensor.copy_(forged_check())
        backend.all_reduce_bitwise_and(tensor)

    def gather_once(tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        del backend.all_gather
        return backend.all_gather(slot, out)

    backend.all_reduce_bitwise_and = check_once
    backend.all_gather = gather_once
