"""The reduction rules: the same result or the same error at every world size."""

from __future__ import annotations

import pytest
import torch

from distcomm import InvalidArgumentError, LocalCommunicator
from distcomm.values.ops import ReduceOp
from distcomm.values.reduction_rules import int_bits, needs_exact, reduce_exactly


def test_int_bits_says_when_an_int_fits_in_int64() -> None:
    assert int_bits(2**63 - 1) == 63 and int_bits(-(2**63)) == 63
    assert int_bits(2**63) == 64 and int_bits(-(2**63) - 1) == 64
    assert int_bits(0) == 0 and int_bits(-1) == 0


def test_needs_exact_bounds_each_op() -> None:
    assert not needs_exact(ReduceOp.SUM, [63], 1) and needs_exact(ReduceOp.SUM, [63, 1], 2)
    assert not needs_exact(ReduceOp.SUM, [62, 62], 2)  # each below 2**62: the sum stays below 2**63
    assert not needs_exact(ReduceOp.SUM, [61, 10, 3, 0], 4) and needs_exact(ReduceOp.MEAN, [62, 0, 0], 3)
    assert needs_exact(ReduceOp.PRODUCT, [40, 40], 2) and not needs_exact(ReduceOp.PRODUCT, [31, 31], 2)
    assert not needs_exact(ReduceOp.MAX, [63, 63], 2) and needs_exact(ReduceOp.MIN, [64, 0], 2)


def test_reduce_exactly_follows_python() -> None:
    columns = [(2**70, 1), (True, True), (1, 2.5)]
    assert reduce_exactly(columns, ReduceOp.SUM, 2) == [2**70 + 1, 2, 3.5]
    assert reduce_exactly([(2**70, 2)], ReduceOp.MEAN, 2) == [float(2**70 + 2) / 2]
    assert reduce_exactly([(2**40, 2**40)], ReduceOp.PRODUCT, 2) == [2**80]
    assert reduce_exactly([(True, False)], ReduceOp.MIN, 2) == [False]
    with pytest.raises(InvalidArgumentError, match="does not fit in a float"):
        reduce_exactly([(10**400, 1)], ReduceOp.MEAN, 2)


def refused_everywhere(comm):
    """What a world of any size says to inputs some backend cannot reduce."""
    messages = []
    for data, op in [(torch.tensor([1 + 1j]), "product"), (torch.tensor([1], dtype=torch.uint64), "sum"), (1j, "max")]:
        try:
            comm.all_reduce(data, op)
            messages.append(None)
        except InvalidArgumentError as error:
            messages.append(str(error))
    return messages


def test_what_no_backend_can_reduce_is_refused_at_every_world_size(dist_world) -> None:
    alone = refused_everywhere(LocalCommunicator())
    assert all(alone) and "complex" in alone[0] and "uint64" in alone[1] and "int64" in alone[1]
    for n in (1, 2):
        assert dist_world(n).run(refused_everywhere) == [alone] * n


def bad_tensors(comm):
    messages = []
    for tensor in (torch.ones(1).expand(4), torch.empty(3, device="meta")):
        for call in (lambda t: comm.all_reduce(t), lambda t: comm.broadcast(t), lambda t: comm.all_gather(t)):
            try:
                call(tensor)
                messages.append(None)
            except InvalidArgumentError as error:
                messages.append(str(error))
    return messages


def test_expanded_tensors_are_refused_where_filled_and_meta_tensors_everywhere(dist_world) -> None:
    for outcome in dist_world(2).run(bad_tensors) + [bad_tensors(LocalCommunicator())]:
        assert outcome[2] is None  # an expanded view is only read by a gather: its values are gathered
        refused = outcome[:2] + outcome[3:]
        assert all(refused), outcome
        assert all("expanded view" in m for m in refused[:2]) and all("meta tensor" in m for m in refused[2:])
        for message, operation in zip(refused, ["all_reduce", "broadcast", "all_reduce", "broadcast", "all_gather"]):
            assert f"{operation}: the " in message, message  # on more ranks, after the rank that refused


def test_the_world_of_one_rule_gives_what_the_general_path_gives() -> None:
    from distcomm import LocalCommunicator
    from distcomm.values.ops import ReduceOp
    from distcomm.values.reduction_rules import NOT_ALONE, reduce_if_alone

    assert reduce_if_alone(3, ReduceOp.SUM, 2) is NOT_ALONE and reduce_if_alone([1], ReduceOp.SUM, 1) is NOT_ALONE
    assert reduce_if_alone(2**70, ReduceOp.SUM, 1) is NOT_ALONE  # beyond int64: the exact general path
    for value in (3, 2.5, True, 1 + 2j):
        for op in (ReduceOp.SUM, ReduceOp.MEAN, ReduceOp.MAX):
            if isinstance(value, complex) and op is ReduceOp.MAX:
                continue
            alone = reduce_if_alone(value, op, 1)
            general = LocalCommunicator().all_reduce([value], op)[0]  # a list takes the general path
            assert (type(alone), alone) == (type(general), general), (value, op)
