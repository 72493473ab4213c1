"""Policy backends by name, so `--backend` reaches a user's model as easily as a built-in one.

A name is one of three things: an import path `my_pkg.policy:MyPolicy`; a name registered by an
installed package under the entry-point group `rolloutq.backends` (rolloutq's own backends are
registered there too, in pyproject.toml); or a built-in module of this package (`cnn` ->
`rolloutq.policy_workers.backends.cnn:Backend`), which is how a source checkout finds them uninstalled.
What a name stands for is a class (or factory) that takes the backend options as keywords and
builds a `PolicyBackend` (docs/EXTENDING.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any

from rolloutq.policy_workers.base import PolicyBackend
from rolloutq.policy_workers.errors import BackendNotFound, BackendUnavailable

GROUP = "rolloutq.backends"
REQUIRED = ("load", "metadata", "infer")
EXTRAS = {"torch": "serve", "safetensors": "serve", "ray": "serve", "mujoco": "sim"}
"""rolloutq's extra that installs each third-party module a built-in backend imports."""
_HOW_TO_PLUG_IN = (f"name your own as my_pkg.policy:MyPolicy or register it under the entry-point group {GROUP} "
                   "(docs/EXTENDING.md)")


def _builtins() -> dict[str, str]:
    return {m.name.replace("_", "-"): f"{__name__}.{m.name}:Backend"
            for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def _registered() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for ep in entry_points(group=GROUP):
        if ep.value not in found.setdefault(ep.name, []):
            found[ep.name].append(ep.value)
    return found


def available() -> list[str]:
    """Every backend name: built-ins and those installed packages register (what `--help` lists)."""
    return sorted({*_builtins(), *_registered()})


def names_help() -> str:
    """The names for a `--backend` help text."""
    return f"{', '.join(available())}, or an import path my_pkg.policy:MyPolicy"


def backend_class(name: str) -> Any:
    """The class (or factory) a backend name stands for, imported but not built."""
    if ":" in name:
        return _import(name, name, builtin=False)
    key = name.replace("_", "-")
    registered = _registered()
    targets = registered.get(name) or registered.get(key)
    if targets and len(targets) > 1:
        raise BackendNotFound(f"policy backend {name!r} is registered twice under {GROUP}: {', '.join(targets)}; "
                              "uninstall one of those packages, or name the one you mean by its import path")
    target = targets[0] if targets else _builtins().get(key)
    if target is None:
        raise BackendNotFound(f"no policy backend {name!r}; available: {', '.join(available())}; {_HOW_TO_PLUG_IN}")
    return _import(name, target, builtin=target.startswith(f"{__name__}."))


def make_backend(name: str, **options: Any) -> PolicyBackend:
    """The backend a name stands for, built with `options` (not yet loaded)."""
    backend = backend_class(name)(**options)
    missing = [m for m in REQUIRED if not callable(getattr(backend, m, None))]
    if missing:
        raise BackendNotFound(f"{name!r} built a {type(backend).__name__}, which is not a policy backend: it has no "
                              f"{', '.join(missing)} (subclass rolloutq.policy_workers.base.PolicyBackend)")
    return backend


def _import(name: str, target: str, builtin: bool) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(f"{e.name}.")):
            raise BackendUnavailable(_missing(name, e.name, builtin)) from e
        raise BackendNotFound(f"policy backend {name!r}: cannot import {module_name!r}; install the package that "
                              "holds it, or put its folder on PYTHONPATH") from None
    try:
        return getattr(module, attr) if attr else module
    except AttributeError:
        raise BackendNotFound(f"policy backend {name!r}: module {module_name!r} has no {attr!r}") from None


def _missing(name: str, module: str | None, builtin: bool) -> str:
    top = (module or "?").split(".")[0]
    how = (f"pip install 'rolloutq[{EXTRAS[top]}]'" if builtin and top in EXTRAS
           else "install the package that provides it")
    return f"policy backend {name!r} needs the module {top!r}, which is not installed here: {how}"
