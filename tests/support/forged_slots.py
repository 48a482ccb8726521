"""Openings as a forged peer would send them: distcomm's check and slot around any body."""

from __future__ import annotations

import numpy as np
import torch

from distcomm.values.ops import ReduceOp
from distcomm.wire import call_check
from distcomm.wire.call_check import CHECK_MARK, CHECK_WORDS, MAGIC, TAG_BYTES, slot_bytes


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


def forged_check(tag: str, *, overflow: bool = True) -> np.ndarray:
    """The check of the call ``tag`` (``"operation step"``), saying this rank's body did not fit its
    share (so every rank takes the second step, where the forged slot follows)."""
    operation, step = tag.split(" ", 1)
    words = np.zeros(CHECK_WORDS, dtype=np.float64)
    words[call_check._MARK] = CHECK_MARK
    words[call_check._CHUNKS : call_check._HEAD_WORDS] = call_check._fingerprint(call_check._prefix(operation, step), 0)
    words[call_check._OVERFLOWS] = 1.0 if overflow else 0.0
    return words


def send_forged_opening(comm, tag: str, body: bytes, *, magic: bytes = MAGIC, announced: int | None = None) -> None:  # type: ignore[no-untyped-def]
    """As one rank of ``comm``: the opening of call ``tag`` with a forged slot carrying ``body``."""
    comm.tensor_backend.all_reduce(torch.from_numpy(forged_check(tag)), ReduceOp.SUM)
    comm.tensor_backend.all_gather(forged_slot(comm.world_size, tag, body, magic=magic, announced=announced))


def forge_next_opening(comm, slot: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    """Make this rank's next opening send ``slot`` in its second step, whatever its call: its check
    says its body did not fit, so every rank takes that step."""
    backend = comm.tensor_backend

    def check_once(tensor: torch.Tensor, op: ReduceOp) -> None:
        del backend.all_reduce
        words = tensor.numpy()
        words[call_check._HEAD_WORDS :] = 0.0
        words[call_check._OVERFLOWS] = 1.0
        backend.all_reduce(tensor, op)

    def gather_once(tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        del backend.all_gather
        return backend.all_gather(slot, out)

    backend.all_reduce = check_once
    backend.all_gather = gather_once
