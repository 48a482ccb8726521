"""Meshes: the ranks of a communicator laid out as a grid with named dimensions, and one
communicator per dimension for the ranks that share this rank's other coordinates.

The layout is row-major, as ``torch.arange(world_size).reshape(shape)``: with ``{"dp": 2,
"gp": 2}`` ranks 0 and 1 share a ``gp`` group and ranks 0 and 2 a ``dp`` group. Over a
whole torch.distributed world the groups are those of a torch ``DeviceMesh``
(:attr:`Mesh.device_mesh`, for DTensor and FSDP2); over a subgroup they are made by
splitting; over a world of one every dimension has size one.

Tested by tests/values/test_mesh.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs

from distcomm.errors import InvalidArgumentError

C = TypeVar("C")


def parse_mesh(dims: Mapping[str, int] | Sequence[int], names: Sequence[str] | None, world_size: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The names and sizes of a mesh's dimensions, ``-1`` (at most one) resolved to the rest, or a clear error."""
    if isinstance(dims, Mapping):
        if names is not None:
            raise InvalidArgumentError("mesh: give the dimensions as a dict {name: size}, or sizes and names, not both")
        names, sizes = tuple(dims), tuple(dims.values())
    elif isinstance(dims, Sequence) and not isinstance(dims, (str, bytes)):
        sizes = tuple(dims)
        names = tuple(names) if names is not None else tuple(f"dim{i}" for i in range(len(sizes)))
    else:
        raise InvalidArgumentError(f"mesh takes {{name: size}} or a shape, got {dims!r:.60}")
    if not sizes or len(names) != len(sizes) or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise InvalidArgumentError(f"mesh: each dimension needs a distinct name, got names {list(names)} for sizes {list(sizes)}")
    if any(type(s) is not int or (s < 1 and s != -1) for s in sizes) or list(sizes).count(-1) > 1:
        raise InvalidArgumentError(f"mesh: sizes are positive ints, with at most one -1 for the rest; got {list(sizes)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if world_size % known:
            raise InvalidArgumentError(f"mesh: {world_size} ranks do not divide into {list(sizes)}")
        sizes = tuple(world_size // known if s == -1 else s for s in sizes)
    if math.prod(sizes) != world_size:
        raise InvalidArgumentError(f"mesh: a {' x '.join(map(str, sizes))} mesh needs {math.prod(sizes)} ranks, the communicator has {world_size}")
    return tuple(names), sizes


def coordinates(rank: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Where ``rank`` sits in a row-major grid of ``shape``."""
    place = []
    for size in reversed(shape):
        rank, index = divmod(rank, size)
        place.append(index)
    return tuple(reversed(place))


def groups_along(shape: tuple[int, ...], dim: int) -> list[list[int]]:
    """The groups of ranks along dimension ``dim`` of a row-major grid, in a fixed order."""
    strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    others = [range(size) for d, size in enumerate(shape) if d != dim]
    result = []
    for place in itertools.product(*others):
        base = sum(index * strides[d] for d, index in zip([d for d in range(len(shape)) if d != dim], place))
        result.append([base + i * strides[dim] for i in range(shape[dim])])
    return result


@attrs.frozen
class Mesh(Generic[C]):
    """A communicator's ranks as a named grid: ``mesh["gp"]`` is this rank's communicator along ``gp``."""

    names: tuple[str, ...]
    shape: tuple[int, ...]
    coordinates: tuple[int, ...]
    """This rank's place in the grid, one index per dimension."""
    communicators: tuple[C, ...]
    """One per dimension, in the order of :attr:`names`."""
    device_mesh: Any = None
    """The torch ``DeviceMesh`` behind it, where one was made (a whole torch.distributed world)."""

    def __getitem__(self, name: str) -> C:
        try:
            return self.communicators[self.names.index(name)]
        except ValueError:
            raise KeyError(f"the mesh has dimensions {list(self.names)}, not {name!r}") from None

    def size(self, name: str) -> int:
        """How many ranks lie along dimension ``name``."""
        return self.shape[self.names.index(name)]

    def coordinate(self, name: str) -> int:
        """This rank's index along dimension ``name`` (its rank in ``mesh[name]``)."""
        return self.coordinates[self.names.index(name)]
