"""Task registry: `make_task("reach", **options)` imports `sim_workers.tasks.reach` and builds its
`Adapter`. Adding a task means adding one module here (external simulators go in `adapters/`)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from sim_workers.base import SimAdapter
from sim_workers.errors import TaskNotFound


def available() -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def make_task(name: str, **options: Any) -> SimAdapter:
    return task_class(name)(**options)


def task_class(name: str) -> type[SimAdapter]:
    """The adapter class of a task, without building an environment (for its `layout`)."""
    module_name = name.replace("-", "_")
    for package in (__name__, "sim_workers.adapters"):
        try:
            return importlib.import_module(f"{package}.{module_name}").Adapter
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{module_name}":
                raise
    raise TaskNotFound(f"no task {name!r}; available: {', '.join(available())}")
