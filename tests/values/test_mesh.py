"""Meshes: named grids of ranks, row-major, with a communicator per dimension, on real Gloo ranks."""

from __future__ import annotations

import pytest
import torch

from distcomm import InconsistentInputError, InvalidArgumentError, LocalCommunicator
from distcomm.values.mesh import coordinates, groups_along, parse_mesh


def test_layouts_are_row_major_and_minus_one_is_the_rest() -> None:
    assert parse_mesh({"dp": 2, "gp": -1}, None, 8) == (("dp", "gp"), (2, 4))
    assert parse_mesh([3, 2], ["a", "b"], 6) == (("a", "b"), (3, 2)) and parse_mesh([4], None, 4) == (("dim0",), (4,))
    assert coordinates(5, (2, 4)) == (1, 1) and [coordinates(r, (2, 2)) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    grid = torch.arange(12).reshape(2, 3, 2)
    for dim in range(3):
        expected = grid.movedim(dim, -1).reshape(-1, grid.shape[dim]).tolist()
        assert sorted(groups_along((2, 3, 2), dim)) == sorted(expected)


@pytest.mark.parametrize(("dims", "names", "message"), [
    ({"dp": 3}, None, "needs 3 ranks, the communicator has 4"), ({"a": -1, "b": -1}, None, "at most one -1"),
    ([2, 2], ["x", "x"], "distinct name"), ({"dp": 3, "gp": -1}, None, "do not divide"), ({"dp": 0}, None, "positive"),
])  # fmt: skip
def test_bad_layouts_are_clear_errors(dims, names, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse_mesh(dims, names, 4)


def grid(comm):
    mesh = comm.mesh({"dp": 2, "gp": -1})
    gp, dp = mesh["gp"], mesh["dp"]
    members = gp.all_gather(comm.rank), dp.all_gather(comm.rank)
    reduced = gp.all_reduce(torch.tensor([comm.rank]))
    sub = comm.split([1, 2, 3])
    inner = None
    if sub is not None:
        m = sub.mesh([3], ["ring"])
        inner = (m.device_mesh is None, m["ring"].all_gather(comm.rank), m.coordinate("ring"))
    timeouts = {gp.timeout, dp.timeout, *(() if sub is None else (m["ring"].timeout,))}
    assert timeouts == {comm.timeout}, timeouts  # every dimension keeps the world's timeout, never torch's 30 minutes
    return members, reduced.item(), mesh.coordinates, type(mesh.device_mesh).__name__, mesh.device_mesh.mesh.tolist(), inner


def test_a_mesh_over_the_world_is_a_device_mesh_with_a_communicator_per_dimension(dist_world) -> None:
    results = dist_world(4).run(grid)
    for rank, (members, reduced, place, kind, layout, inner) in enumerate(results):
        assert members == ([2 * (rank // 2), 2 * (rank // 2) + 1], [rank % 2, rank % 2 + 2])
        assert reduced == sum(members[0]) and place == (rank // 2, rank % 2)
        assert kind == "DeviceMesh" and layout == [[0, 1], [2, 3]]
        assert inner == (None if rank == 0 else (True, [1, 2, 3], rank - 1))


def disagreeing_meshes(comm):
    try:
        comm.mesh({"dp": 2, "gp": 1} if comm.rank else {"dp": 1, "gp": 2})
    except InconsistentInputError as error:
        first = str(error)
    try:
        comm.mesh({"dp": 3})
    except InvalidArgumentError as error:
        second = type(error).__name__
    return first, second, comm.all_reduce(1)


def test_ranks_that_ask_for_different_meshes_raise_the_same_error(dist_world) -> None:
    zero, one = dist_world(2).run(disagreeing_meshes)
    assert zero == one and "mesh" in zero[0] and zero[1:] == ("InconsistentInputError", 2)


def test_a_world_of_one_is_a_mesh_of_ones() -> None:
    mesh = LocalCommunicator().mesh({"dp": 1, "gp": -1})
    assert mesh.shape == (1, 1) and mesh.device_mesh is None and mesh["gp"].all_reduce(3) == 3 and mesh.size("dp") == 1
    with pytest.raises(KeyError, match="not 'tp'"):
        mesh["tp"]
