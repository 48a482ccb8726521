import pytest
import torch.distributed as dist

from distcomm import InvalidArgumentError, ReduceOp
from distcomm.values.ops import parse_reduce_op


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("sum", ReduceOp.SUM), ("SUM", ReduceOp.SUM), (" Mean ", ReduceOp.MEAN), ("avg", ReduceOp.MEAN),
        ("min", ReduceOp.MIN), ("Max", ReduceOp.MAX), ("product", ReduceOp.PRODUCT), ("prod", ReduceOp.PRODUCT),
        (ReduceOp.MAX, ReduceOp.MAX), (dist.ReduceOp.SUM, ReduceOp.SUM), (dist.ReduceOp.AVG, ReduceOp.MEAN),
        (dist.ReduceOp.MIN, ReduceOp.MIN), (dist.ReduceOp.PRODUCT, ReduceOp.PRODUCT),
    ],
)  # fmt: skip
def test_every_spelling_parses(spelling, expected) -> None:
    assert parse_reduce_op(spelling) is expected


@pytest.mark.parametrize("bad", ["median", "", 3, None, dist.ReduceOp.BAND])
def test_unknown_ops_name_what_is_allowed(bad) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown reduce op.*'sum', 'mean', 'min', 'max', 'product'"):
        parse_reduce_op(bad)
