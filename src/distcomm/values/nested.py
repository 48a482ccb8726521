"""Flatten nested dicts, lists and tuples into leaves, and rebuild them.

Collectives on nested data (a dict of metrics, a tuple of tensors) flatten the
structure, communicate the leaves, and rebuild the same structure around the results.
The spec records container types, so a ``tuple`` comes back a ``tuple``, a namedtuple
its own class, and a dict keeps its key order.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any, cast

import attrs

from distcomm.errors import InvalidArgumentError


@attrs.frozen
class TreeSpec:
    """The shape of a nested structure: its container types and keys, without the leaves.

    ``factory`` is a ``defaultdict``'s ``default_factory``, which its rebuild needs.
    """

    container: type | None
    keys: tuple[Any, ...] = ()
    children: tuple[TreeSpec, ...] = ()
    factory: Any = None

    @property
    def is_leaf(self) -> bool:
        return self.container is None

    def build(self, leaves: Iterator[Any]) -> Any:
        """Rebuild the structure, taking leaves in order from ``leaves``."""
        if self.container is None:
            return next(leaves)
        values = [child.build(leaves) for child in self.children]
        if issubclass(self.container, dict):
            return _make_dict(self.container, self.factory, list(zip(self.keys, values)))
        if issubclass(self.container, tuple) and hasattr(self.container, "_fields"):
            return self.container(*values)  # a namedtuple
        return cast(Any, self.container)(values)


LEAF = TreeSpec(None)
"""The spec of every leaf (specs are immutable, so one serves all)."""


def _make_dict(container: Any, factory: Any, items: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A ``container`` holding ``items``, as the caller's mapping was: a ``defaultdict`` keeps its
    factory, a ``Counter`` its counts (its constructor would count the pairs instead)."""
    if issubclass(container, collections.defaultdict):
        return container(factory, items)  # type: ignore[no-any-return]
    if issubclass(container, collections.Counter):
        counter = container()
        dict.update(counter, items)
        return counter  # type: ignore[no-any-return]
    try:
        rebuilt = container(items)
    except TypeError as error:
        raise InvalidArgumentError(
            f"cannot rebuild a {container.__qualname__} from its items ({error}); pass a dict, or a "
            "mapping whose constructor takes (key, value) pairs"
        ) from error
    if len(rebuilt) != len(items):
        raise InvalidArgumentError(f"a {container.__qualname__} built from {len(items)} items holds {len(rebuilt)}; pass a dict")
    return rebuilt  # type: ignore[no-any-return]


def is_container(value: Any) -> bool:
    """Whether ``value`` is a structure that collectives walk into."""
    return isinstance(value, (dict, list, tuple))


def flatten(data: Any) -> tuple[list[Any], list[str], TreeSpec]:
    """Return the leaves of ``data`` in order, the path of each (for error messages), and its spec."""
    leaves: list[Any] = []
    paths: list[str] = []

    def walk(value: Any, path: str) -> TreeSpec:
        if isinstance(value, dict):
            keys = tuple(value.keys())
            children = tuple([walk(value[k], f"{path}[{k!r}]") for k in keys])
            factory = value.default_factory if isinstance(value, collections.defaultdict) else None
            return TreeSpec(type(value), keys, children, factory)
        if isinstance(value, (list, tuple)):
            children = tuple([walk(v, f"{path}[{i}]") for i, v in enumerate(value)])
            return TreeSpec(type(value), (), children)
        leaves.append(value)
        paths.append(path)
        return LEAF

    spec = walk(data, "")
    return leaves, paths, spec


def unflatten(spec: TreeSpec, leaves: list[Any]) -> Any:
    """Inverse of :func:`flatten`."""
    return spec.build(iter(leaves))


def map_leaves(fn: Callable[[Any], Any], data: Any) -> Any:
    """Apply ``fn`` to every leaf of ``data`` and keep the structure."""
    leaves, _, spec = flatten(data)
    return unflatten(spec, [fn(leaf) for leaf in leaves])
