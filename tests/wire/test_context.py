"""The channel: a communicator's backend, codec and device rules, shared with its views."""

from __future__ import annotations

import torch

from distcomm import CheckedCommunicator, LocalCommunicator, RestrictedCodec


def test_views_share_the_channel_and_its_codec() -> None:
    comm = LocalCommunicator()
    checked = CheckedCommunicator(comm)
    assert checked._context is comm._context
    checked.object_codec = RestrictedCodec()
    assert isinstance(comm._context.object_codec, RestrictedCodec)


def test_transport_copies_only_what_the_backend_cannot_take() -> None:
    channel = LocalCommunicator()._context
    contiguous = torch.ones(4)
    assert channel.transport(contiguous, "test") is contiguous
    strided = torch.ones(4, 4).t()
    moved = channel.transport(strided, "test")
    assert moved is not strided and moved.is_contiguous() and torch.equal(moved, strided)
    assert channel.accepts(torch.device("cpu")) and not channel.accepts(torch.device("meta"))
    assert channel.device_types == {"cpu": True, "cuda": True, "meta": False}  # asked once per type (cpu and cuda when made)
