"""fairchem's graph parallelism (``fairchem.core.common.gp_utils``) over distcomm: the same names
and behaviour, so code written for it runs on distcomm.

The data-parallel × graph-parallel grid is a :meth:`~distcomm.Communicator.mesh` of the active
communicator, ``{"dp": world_size // gp_size, "gp": gp_size}``, row-major as fairchem lays it
out (graph-parallel groups are runs of consecutive ranks); the region functions are the
communicator's differentiable collectives (:mod:`distcomm.autograd`) over its ``gp``
dimension. Sizes along the split dimension may differ per rank: every part's size is
exchanged, never assumed. On a world of one every group has one rank and every function is
the identity with the identity's gradient.

Tested by tests/fairchem/test_gp_utils.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from distcomm.autograd import part_sizes
from distcomm.communicator import Communicator
from distcomm.errors import ConfigurationError, InvalidArgumentError
from distcomm.launch.active import get_communicator
from distcomm.values.mesh import Mesh

logger = logging.getLogger(__name__)

_MESH: Mesh[Communicator] | None = None

__all__ = [
    "setup_graph_parallel_groups", "setup_gp", "cleanup_gp", "initialized",
    "get_dp_group", "get_gp_group", "get_dp_rank", "get_gp_rank", "get_dp_world_size", "get_gp_world_size",
    "size_list_fn", "scatter_to_model_parallel_region", "reduce_from_model_parallel_region",
    "gather_from_model_parallel_region", "gather_from_model_parallel_region_sum_grad", "scale_backward_grad",
    "graph_parallel_mesh",
]  # fmt: skip


def setup_graph_parallel_groups(graph_parallel_group_size: int, distributed_backend: str) -> None:
    """Lay the active communicator's ranks out as ``dp × gp`` with ``graph_parallel_group_size``
    consecutive ranks per graph-parallel group (every rank calls it)."""
    global _MESH
    comm = get_communicator()
    if _MESH is not None:
        raise ConfigurationError("graph parallel groups are already set up: call cleanup_gp() first")
    if comm.world_size > 1 and distributed_backend != comm.backend:
        raise ConfigurationError(
            f"graph parallel groups run on the job's backend {comm.backend!r}, not {distributed_backend!r}: "
            "set distributed_backend to the backend the job was started with"
        )
    if isinstance(graph_parallel_group_size, bool) or not isinstance(graph_parallel_group_size, int):
        raise InvalidArgumentError(f"the graph parallel group size is a number of ranks, got {graph_parallel_group_size!r}")
    if not 0 < graph_parallel_group_size <= comm.world_size or comm.world_size % graph_parallel_group_size:
        raise InvalidArgumentError(
            f"a graph parallel group of {graph_parallel_group_size} ranks does not divide the world of {comm.world_size}"
        )
    _MESH = comm.mesh({"dp": comm.world_size // graph_parallel_group_size, "gp": graph_parallel_group_size})
    if comm.rank == 0:
        logger.info("graph parallel groups of %d ranks, data parallel over %d", graph_parallel_group_size, _MESH.size("dp"))


def setup_gp(config: Mapping[str, Any]) -> None:
    """:func:`setup_graph_parallel_groups` from fairchem's config: ``gp_gpus`` (at most the world
    size) and ``distributed_backend``."""
    comm = get_communicator()
    setup_graph_parallel_groups(min(int(config["gp_gpus"]), comm.world_size), str(config["distributed_backend"]))


def cleanup_gp() -> None:
    """Forget the graph-parallel groups (their communicators are closed)."""
    global _MESH
    if _MESH is not None:
        for comm in _MESH.communicators:
            comm.close()
    _MESH = None


def initialized() -> bool:
    """Whether the graph-parallel groups are set up."""
    return _MESH is not None


def graph_parallel_mesh() -> Mesh[Communicator]:
    """The ``dp × gp`` mesh (``mesh["gp"]`` and ``mesh["dp"]`` are communicators), or a clear error."""
    if _MESH is None:
        raise ConfigurationError("graph parallelism is not set up: call setup_gp(config) from distcomm.fairchem.gp_utils first")
    return _MESH


def get_dp_group() -> Any:
    """The torch process group of this rank's data-parallel group (``None`` on a world of one)."""
    return graph_parallel_mesh()["dp"].group


def get_gp_group() -> Any:
    """The torch process group of this rank's graph-parallel group (``None`` on a world of one)."""
    return graph_parallel_mesh()["gp"].group


def get_dp_rank() -> int:
    return graph_parallel_mesh()["dp"].rank


def get_gp_rank() -> int:
    return graph_parallel_mesh()["gp"].rank


def get_dp_world_size() -> int:
    return graph_parallel_mesh()["dp"].world_size


def get_gp_world_size() -> int:
    """The graph-parallel group's size; 1 when graph parallelism is not set up, as in fairchem."""
    return 1 if _MESH is None else _MESH["gp"].world_size


def size_list_fn(size: int, parts: int) -> list[int]:
    """How ``size`` rows split over ``parts`` ranks: the first ``size % parts`` get one more."""
    return part_sizes(size, parts)


def scatter_to_model_parallel_region(input: torch.Tensor, dim: int = 0) -> torch.Tensor:  # noqa: A002 (fairchem's name)
    """This rank's rows (:func:`size_list_fn`) of ``input``, the same on every graph-parallel rank;
    backward gathers the rows' gradients."""
    return graph_parallel_mesh()["gp"].autograd.scatter_to_group(input, dim)


def reduce_from_model_parallel_region(input: torch.Tensor) -> torch.Tensor:  # noqa: A002
    """The sum over the graph-parallel group (a new tensor); the gradient passes back as it is."""
    return graph_parallel_mesh()["gp"].autograd.reduce_from_group(input)


def gather_from_model_parallel_region(input: torch.Tensor, natoms: int) -> torch.Tensor:  # noqa: A002
    """Every graph-parallel rank's rows, concatenated (``natoms`` in all); backward keeps this rank's rows."""
    return _gather(input, natoms, sum_grad=False)


def gather_from_model_parallel_region_sum_grad(input: torch.Tensor, natoms: int, gloo_backend: bool = False) -> torch.Tensor:  # noqa: A002
    """As :func:`gather_from_model_parallel_region`, but backward sums this rank's rows' gradients
    over the group. ``gloo_backend`` is accepted for fairchem's callers; distcomm picks the way."""
    return _gather(input, natoms, sum_grad=True)


def _gather(input: torch.Tensor, natoms: int, *, sum_grad: bool) -> torch.Tensor:  # noqa: A002
    gathered = graph_parallel_mesh()["gp"].autograd.gather_from_group(input, 0, sum_grad=sum_grad)
    if gathered.shape[0] != natoms:
        raise InvalidArgumentError(f"the graph-parallel ranks hold {gathered.shape[0]} rows in all, not natoms={natoms}")
    return gathered


def scale_backward_grad(input: torch.Tensor) -> torch.Tensor:  # noqa: A002
    """``input`` itself, its gradient multiplied by the graph-parallel group's size on the way back
    (DDP's mean over every rank would otherwise shrink it by that factor)."""
    mesh = graph_parallel_mesh()
    return mesh["gp"].autograd.scale_backward(input, float(mesh.size("gp")))
