"""The words every rank raises when ranks do not match."""

from __future__ import annotations

import torch

from distcomm.wire.mismatch import by_rank, digest64, explain, show


def test_the_first_difference_is_named_with_the_ranks() -> None:
    claims = [(None, (("['a']", ("tensor", torch.float32, (2,))),)), (None, (("['a']", ("tensor", torch.int64, (2,))),))]
    assert explain("all_reduce", claims) == (
        "all_reduce: ranks passed inputs that do not match; first difference at ['a']: "
        "rank 0: tensor float32[2]; rank 1: tensor int64[2]"
    )
    assert explain("split", [("bad ranks", ()), (None, ())]) == "split: rank 0 cannot take part: bad ranks"


def test_words_and_digests() -> None:
    assert by_rank(["float", "str", "float"]) == "ranks 0, 2: float; rank 1: str"
    assert show(("tensor", torch.float32, (2, 3), "cpu")) == "tensor float32[2, 3] on cpu"
    assert show(("odd",)) == "('odd',)" and show("number") == "number"  # a peer's odd description is shown, not parsed
    assert digest64(b"x") == digest64(b"x") != digest64(b"y") and -(2**63) <= digest64(b"x") < 2**63
