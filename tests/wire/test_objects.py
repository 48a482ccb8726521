"""An object's call-check body: its length and as much as fits, or a refusal's reason."""

from __future__ import annotations

from distcomm.wire.objects import LENGTH_BYTES, slot_body


def test_a_body_holds_the_length_then_the_head_of_the_payload() -> None:
    body = slot_body(b"x" * 100, 64)
    assert int.from_bytes(body[:LENGTH_BYTES], "little", signed=True) == 100 and body[LENGTH_BYTES:] == b"x" * 56


def test_a_refusal_holds_its_negated_length_and_its_reason() -> None:
    body = slot_body(b"bad input", 64, refused=True)
    assert int.from_bytes(body[:LENGTH_BYTES], "little", signed=True) == -9 and body[LENGTH_BYTES:] == b"bad input"
