"""Tasks by name, so a sweep's `task` reaches a user's simulator as easily as a built-in one.

A name is one of three things: an import path `my_pkg.env:MyEnv`; a name registered by an
installed package under the entry-point group `rolloutq.tasks` (rolloutq's own tasks are
registered there too, in pyproject.toml); or a built-in module of `rolloutq.sim_workers.tasks` or
`rolloutq.sim_workers.adapters` (`reach` -> `rolloutq.sim_workers.tasks.reach:Adapter`), which is how a source
checkout finds them uninstalled. What a name stands for is a `SimAdapter` class (or factory) that
takes the task options as keywords, or a `VectorSimAdapter` class that also takes `num_envs`
(docs/EXTENDING.md). A built-in module may pair its `Adapter` with a `VectorAdapter`.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from importlib.metadata import entry_points
from typing import Any

from rolloutq.sim_workers.base import SimAdapter
from rolloutq.sim_workers.errors import TaskNotFound, TaskUnavailable
from rolloutq.sim_workers.vector import SingleEnvView, VectorSimAdapter

GROUP = "rolloutq.tasks"
REQUIRED = ("reset", "observe", "step", "action_from_chunk")
EXTRAS = {"mujoco": "sim", "imageio": "sim", "gymnasium": "gym", "gym": "gym"}
"""rolloutq's extra that installs what a built-in task imports, by module (or by task name, for an
adapter that says what is missing in words)."""
NEEDS = {
    "libero": (("libero", "robosuite"), "LIBERO runs from its own venv: bash scripts/install_libero.sh --full, then "
               "run .venv-libero/bin/rolloutq (docs/TASKS.md, \"libero\")"),
    "g1-isaaclab": (("isaaclab", "warp"), "Isaac Lab 3.0 runs from its own Python 3.12 venv: bash "
                    "scripts/install_isaaclab.sh, then run .venv-isaaclab/bin/rolloutq "
                    "(docs/TASKS.md, \"g1-isaaclab\")"),
}
"""Modules a built-in task's simulator imports that no extra of rolloutq installs, and how to get them."""
_PACKAGES = (__name__, "rolloutq.sim_workers.adapters")
_HOW_TO_PLUG_IN = (f"name your own as my_pkg.env:MyEnv or register it under the entry-point group {GROUP} "
                   "(docs/EXTENDING.md)")


def _builtins() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in reversed(_PACKAGES):  # a task module wins over an adapter module of the same name
        path = importlib.import_module(package).__path__
        found.update({m.name.replace("_", "-"): f"{package}.{m.name}:Adapter"
                      for m in pkgutil.iter_modules(path) if not m.name.startswith("_")})
    return found


def _registered() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for ep in entry_points(group=GROUP):
        if ep.value not in found.setdefault(ep.name, []):
            found[ep.name].append(ep.value)
    return found


def available() -> list[str]:
    """Every task name: built-ins and those installed packages register (what `--help` lists)."""
    return sorted({*_builtins(), *_registered()})


def names_help() -> str:
    """The names for a `--task` help text."""
    return f"{', '.join(available())}, or an import path my_pkg.env:MyEnv"


def task_class(name: str) -> Any:
    """The adapter class (or factory) a task name stands for, without building an environment
    (for its `layout`)."""
    if ":" in name:
        return _import(name, name, builtin=False)
    key = name.replace("_", "-")
    registered = _registered()
    targets = registered.get(name) or registered.get(key)
    if targets and len(targets) > 1:
        raise TaskNotFound(f"task {name!r} is registered twice under {GROUP}: {', '.join(targets)}; uninstall one "
                           "of those packages, or name the one you mean by its import path")
    target = targets[0] if targets else _builtins().get(key)
    if target is None:
        raise TaskNotFound(f"no task {name!r}; available: {', '.join(available())}; {_HOW_TO_PLUG_IN}")
    return _import(name, target, builtin=target.startswith(_PACKAGES))


def missing_engine(name: str) -> str | None:
    """What is missing for a task's simulator to start here, in one line, or None; checked without
    importing the simulator (`NEEDS`)."""
    modules, how = NEEDS.get(name.replace("_", "-"), ((), ""))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"task {name!r} needs {', '.join(missing)}, which this Python ({sys.executable}) lacks. {how}"


def vector_class(name: str) -> type[VectorSimAdapter] | None:
    """The task's vectorised adapter, if it has one: the named class itself when it is a
    `VectorSimAdapter`, else a `VectorAdapter` beside it in its module."""
    cls = task_class(name)
    if isinstance(cls, type) and issubclass(cls, VectorSimAdapter):
        return cls
    return getattr(sys.modules.get(getattr(cls, "__module__", "")), "VectorAdapter", None)


def make_task(name: str, **options: Any) -> SimAdapter:
    """One environment of the task, built with `options` (a vectorised adapter with `num_envs=1`)."""
    cls = task_class(name)
    try:
        if isinstance(cls, type) and issubclass(cls, VectorSimAdapter):
            env = SingleEnvView(cls(num_envs=1, **options))
        else:
            env = cls(**options)
    except ImportError as e:  # simulators often import their engine only when an env is built
        raise TaskUnavailable(f"task {name!r} cannot build an environment: {e}"
                              f"{_extra_hint(e.name or name, cls)}") from e
    missing = [m for m in REQUIRED if not callable(getattr(env, m, None))]
    if missing:
        raise TaskNotFound(f"{name!r} built a {type(env).__name__}, which is not a simulator adapter: it has no "
                           f"{', '.join(missing)} (subclass rolloutq.sim_workers.base.SimAdapter)")
    return env


def _import(name: str, target: str, builtin: bool) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(f"{e.name}.")):
            top = (e.name or "?").split(".")[0]
            how = (f"pip install 'rolloutq[{EXTRAS[top]}]'" if builtin and top in EXTRAS
                   else "install the package that provides it")
            raise TaskUnavailable(f"task {name!r} needs the module {top!r}, which is not installed here: {how}") from e
        raise TaskNotFound(f"task {name!r}: cannot import {module_name!r}; install the package that holds it, or put "
                           "its folder on PYTHONPATH") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise TaskNotFound(f"task {name!r}: module {module_name!r} has no {attr!r}") from None


def _extra_hint(module: str | None, cls: Any) -> str:
    top = (module or "").split(".")[0]
    builtin = getattr(cls, "__module__", "").startswith(_PACKAGES)
    return f" (pip install 'rolloutq[{EXTRAS[top]}]')" if builtin and top in EXTRAS else ""
