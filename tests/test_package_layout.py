"""The package's layout: layers that import only the layers below them, and no import cycle, counting
imports inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import distcomm

PACKAGE = Path(distcomm.__file__).resolve().parent


def import_graph() -> dict[str, set[str]]:
    """Each distcomm module and the distcomm modules it imports anywhere in its source."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("distcomm", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distcomm"):
                targets += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            graph[name] |= {t for t in targets if t in modules and t not in (name, "distcomm")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or not (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back() -> None:
    assert cycles(import_graph()) == []


LAYERS: tuple[tuple[str, ...], ...] = (
    ("distcomm.errors",),
    ("distcomm.values",),
    ("distcomm.environment",),
    ("distcomm.backends",),
    ("distcomm.wire",),
    ("distcomm.instrument",),
    ("distcomm.communicator", "distcomm.communicator_view", "distcomm.torch_dist", "distcomm.local",
     "distcomm.autograd", "distcomm.resilience",
     "distcomm.collective_base", "distcomm.object_collectives", "distcomm.async_collectives",
     "distcomm.exchange_collectives", "distcomm.point_to_point", "distcomm.shrinking"),
    ("distcomm.debug",),
    ("distcomm.launch",),
    ("distcomm", "distcomm._moved", "distcomm.distutils", "distcomm.helpers"),
    ("distcomm.__main__", "distcomm.cli", "distcomm.fairchem", "distcomm.testing"),
)  # fmt: skip
"""The package's layers, lowest first: a module imports only from its own layer and those below."""


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the longest prefix that names ``module`` or a package holding it."""
    best, found = -1, None
    for index, members in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > best:
                best, found = len(member), index
    if found is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return found


def test_each_layer_imports_only_the_layers_below_it() -> None:
    upward = sorted(
        (module, target) for module, targets in import_graph().items() for target in targets if layer_of(target) > layer_of(module)
    )
    assert upward == []


def test_the_guard_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layers_guard_sees_an_import_from_above() -> None:
    assert layer_of("distcomm.wire.reduce") < layer_of("distcomm.communicator") < layer_of("distcomm.launch.active")
    assert layer_of("distcomm") > layer_of("distcomm.debug.checked")  # the longest prefix decides
