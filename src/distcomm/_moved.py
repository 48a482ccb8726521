"""The modules that moved into packages, still importable by their old paths for one release.

``import distcomm.checked`` gives :mod:`distcomm.debug.checked` itself (the same module object,
so its classes and patches are shared) and warns with a ``DeprecationWarning`` naming the new
path. Installed by ``import distcomm``.

Tested by tests/test_moved.py.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

MOVED: dict[str, str] = {
    f"distcomm.{old}": f"distcomm.{new}"
    for old, new in {
        "conversion": "values.conversion", "nested": "values.nested", "dtypes": "values.dtypes", "ops": "values.ops",
        "reduction_rules": "values.reduction_rules", "timeouts": "values.timeouts", "mesh": "values.mesh",
        "job_environment": "environment.job", "devices": "environment.devices",
        "backend_choice": "environment.backend_choice", "config": "environment.config",
        "backend": "backends.backend", "handles": "backends.handles", "torch_backend": "backends.torch_dist",
        "channel": "wire.context", "opening": "wire.call_check", "agreement": "wire.layout_agreement",
        "mismatch": "wire.mismatch", "serialization": "wire.codec", "objects": "wire.objects", "reducing": "wire.reduce",
        "broadcasting": "wire.broadcast", "gathering": "wire.gather", "exchanging": "wire.all_to_all",
        "pairwise": "wire.point_to_point", "survivors": "wire.survivors",
        "hooks": "instrument.hooks", "signatures": "instrument.fingerprints",
        "flight_recorder": "instrument.flight_recorder", "dump_signal": "instrument.dump_signal",
        "checked": "debug.checked", "profiled": "debug.profiled", "active": "launch.active",
        "info": "cli.info", "bench": "cli.bench", "trace": "cli.trace", "differentiable": "autograd",
    }.items()
}  # fmt: skip
"""Old module path -> where it lives now."""


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return moved_module(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module at the new path is already executed


def moved_module(old: str) -> ModuleType:
    """The module ``old`` (an old path) now is, with a warning that names its new path."""
    new = MOVED[old]
    warnings.warn(f"{old} moved to {new}; import it from there (the old path goes in the next release)", DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)


def install() -> None:
    """Make the old paths importable (once per process)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
