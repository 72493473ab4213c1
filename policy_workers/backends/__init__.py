"""Backend registry: `make_backend("cnn", **options)` imports `policy_workers.backends.cnn`
and builds its `Backend` class. Adding a backend means adding one module here."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from policy_workers.base import PolicyBackend
from policy_workers.errors import BackendNotFound


def available() -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def make_backend(name: str, **options: Any) -> PolicyBackend:
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{module_name}":
            raise BackendNotFound(f"no policy backend {name!r}; available: {', '.join(available())}") from None
        raise
    return module.Backend(**options)
