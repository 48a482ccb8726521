import pytest
import torch

from distcomm import DistCommError, InvalidArgumentError, LocalCommunicator


def test_identity(local_comm) -> None:
    assert (local_comm.rank, local_comm.world_size, local_comm.local_rank, local_comm.is_master) == (0, 1, 0, True)
    assert local_comm.device == torch.device("cpu") and local_comm.backend == "local"
    assert LocalCommunicator(device="meta").device == torch.device("meta")


def test_gathers_return_new_objects_as_over_a_real_group(local_comm) -> None:
    t = torch.ones(2)
    (only,) = local_comm.all_gather(t)
    assert only is not t and torch.equal(only, t)
    obj = {"a": [1]}
    (copy,) = local_comm.all_gather_object(obj)
    assert copy == obj and copy is not obj


def test_objects_are_pickled_so_unpicklable_ones_fail_in_single_process_tests_too(local_comm) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot be pickled"):
        local_comm.all_gather_object(lambda: None)


def test_context_manager_closes(local_comm) -> None:
    with local_comm as comm:
        comm.barrier()
    assert comm.closed
    comm.close()  # harmless twice
    with pytest.raises(DistCommError, match="closed LocalCommunicator"):
        comm.barrier()


def test_complex_min_and_broadcast_object_list_need_valid_input(local_comm) -> None:
    with pytest.raises(InvalidArgumentError, match="not defined for complex"):
        local_comm.all_reduce(torch.ones(1, dtype=torch.complex64), "min")
    with pytest.raises(InvalidArgumentError, match="needs a list"):
        local_comm.broadcast_object_list((1, 2))
    with pytest.raises(InvalidArgumentError, match="dst=1 is outside the group"):
        local_comm.gather_object(1, dst=1)
