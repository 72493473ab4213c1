"""Checks that run before anything heavy starts (Ray, a model, a simulator), so that a mistake in a
command line costs a second and one line instead of a minute and a traceback.

Each check returns the problems it found as one-line messages that say what to do; the CLI prints
all of them and exits with `SETUP_ERROR`. What cannot be checked cheaply (a backend whose schema
needs its weights, a task without a published observation layout) is skipped without a word.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolloutq.controller.config import mask

SETUP_ERROR = 4
"""Exit status of every command when a pre-flight check failed (nothing ran)."""

PATH_OPTIONS = ("checkpoint", "weights", "path")
"""Backend options that name a local file or folder (visuomotor, cnn, lerobot)."""
HUB_OR_PATH_OPTIONS = ("model_path",)
"""Backend options that name a local folder or a hub id (gr00t): checked only when written as a path."""


@dataclass
class Plan:
    """What a command is about to run, as far as the pre-flight can check it."""

    backend: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    redis_url: str | None = None
    policy_schema: dict[str, dict[str, Any]] | None = None
    """The observation schema a running policy published (external/attach runs), when known."""


def preflight(plan: Plan, *, redis_required: bool = True, schemas: bool = True, engines: bool = True) -> list[str]:
    """Every problem of `plan`, one line each (empty: go ahead). `redis_required` False: an unreachable
    Redis is not a problem (a worker that waits for it). `schemas` False: names, paths and Redis only.
    `engines` False: the task's simulator need not be installed here (its simulators run elsewhere)."""
    problems: list[str] = []
    backend_cls = task_cls = None
    if plan.backend:
        backend_cls = _resolve(problems, "rolloutq.policy_workers.backends", "backend_class", plan.backend)
        problems += check_paths(plan.backend_options)
    if plan.task:
        task_cls = _resolve(problems, "rolloutq.sim_workers.tasks", "task_class", plan.task)
        if task_cls is not None and engines:
            from rolloutq.sim_workers.tasks import missing_engine

            problems += [m] if (m := missing_engine(plan.task)) else []
    if plan.redis_url and redis_required:
        problems += check_redis(plan.redis_url)
    if schemas and task_cls is not None and not problems:
        schema = plan.policy_schema
        if schema is None and backend_cls is not None:
            schema, problem = backend_schema(backend_cls, plan.backend_options)
            problems += [f"backend {plan.backend!r}: {problem}"] if problem else []
        if schema is not None:
            who = f"policy backend {plan.backend!r}" if plan.policy_schema is None else "the running policy"
            problems += check_schema(schema, who, task_cls, plan.task or "", plan.task_options)
    return problems


def _resolve(problems: list[str], module: str, function: str, name: str) -> Any:
    """The class a backend or task name stands for; its registry's one-line error otherwise."""
    import importlib

    from rolloutq.policy_workers.errors import PolicyWorkerError
    from rolloutq.sim_workers.errors import SimWorkerError

    try:
        return getattr(importlib.import_module(module), function)(name)
    except (PolicyWorkerError, SimWorkerError) as e:
        problems.append(str(e))
        return None


def check_paths(options: dict[str, Any]) -> list[str]:
    """Checkpoint, weights and model paths among the backend options exist and are readable."""
    import os

    problems = []
    for key, value in options.items():
        if not isinstance(value, str) or not value:
            continue
        if key in HUB_OR_PATH_OPTIONS and not value.startswith(("/", ".", "~")):
            continue  # a hub id such as nvidia/GR00T-N1.7-3B
        if key not in PATH_OPTIONS + HUB_OR_PATH_OPTIONS:
            continue
        path = Path(value).expanduser()
        if not path.exists():
            problems.append(f"--backend-option {key}={value}: no such file or folder")
        elif not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
            problems.append(f"--backend-option {key}={value}: not readable by this user")
    return problems


def check_redis(url: str, timeout_s: float = 2.0) -> list[str]:
    """A PING with a short timeout; a refusal of PING by an ACL still proves Redis is there."""
    import redis
    from redis import exceptions as rx

    shown = mask(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except ValueError as e:
        return [f"--redis-url {shown}: not a Redis URL ({e}); write redis://[user:password@]host:port/db"]
    try:
        client.ping()
    except rx.NoPermissionError:
        pass
    except rx.AuthenticationError as e:
        return [f"Redis at {shown} refused the login ({e}): check the user and password in --redis-url"]
    except (rx.ConnectionError, rx.TimeoutError, OSError) as e:
        why = str(e).split(". ")[-1].rstrip(".") or type(e).__name__
        return [f"Redis at {shown} did not answer within {timeout_s:g} s ({why}): check that redis-server runs there "
                "and that the host and port of --redis-url are right"]
    except rx.ResponseError as e:
        return [f"Redis at {shown} refused PING ({e}): check the user and password in --redis-url"]
    finally:
        client.close()
    return []


def backend_schema(backend_cls: Any, options: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The backend's observation schema when it can be had without loading weights: (schema, None);
    (None, message) when the options are refused; (None, None) when it cannot be had cheaply."""
    from rolloutq.policy_workers.errors import BackendLoadError

    try:
        backend = backend_cls(**options)
    except BackendLoadError as e:
        return None, str(e)
    except Exception:
        return None, None
    try:
        return dict(backend.metadata().observation_schema), None
    except Exception:  # most backends need their weights for their metadata
        return None, None


def task_schema(task_cls: Any, options: dict[str, Any], privileged: bool) -> dict[str, Any] | None:
    """The observations a task sends, from what its adapter's module publishes (`observation_schema`) or
    from the adapter class's `layout`; None when it publishes neither."""
    make = getattr(sys.modules.get(getattr(task_cls, "__module__", "")), "observation_schema", None)
    if callable(make):
        try:
            params = inspect.signature(make).parameters
            given = {**options, "privileged": privileged}
            return make(**{k: v for k, v in given.items() if k in params})
        except Exception:
            return None
    layout = getattr(task_cls, "layout", None) or {}
    if "image_key" not in layout and "state_dims" not in layout:
        return None
    schema: dict[str, Any] = {}
    if layout.get("image_key"):
        shape = list(layout.get("image_shape") or [])
        if options.get("image_size") and len(shape) == 5:
            shape[2] = shape[3] = int(options["image_size"])
        schema[layout["image_key"]] = {"dtype": "uint8", "shape": shape}
    for key, dim in (layout.get("state_dims") or {}).items():
        schema[key] = {"dtype": "float32", "shape": [1, 1, dim]}
    if layout.get("text_key"):
        schema[layout["text_key"]] = {"kind": "text"}
    return schema


def check_schema(policy: dict[str, Any], policy_name: str, task_cls: Any, task: str,
                 task_options: dict[str, Any]) -> list[str]:
    """The observations the policy expects are ones the task sends, with the same shapes."""
    privileged = any(k.startswith("privileged.") for k in policy)
    sent = task_schema(task_cls, task_options, privileged)
    if sent is None or not policy:
        return []
    missing = sorted(k for k in policy if k not in sent)
    if missing:
        return [f"{policy_name} expects observations that task {task!r} does not send: {_few(missing)} "
                f"(it sends {_few(sorted(sent))}); pick a policy and a task made for each other"]
    wrong = [f"{k} {_shape(policy[k])} (the task sends {_shape(sent[k])})" for k in sorted(policy)
             if not _shapes_agree(policy[k], sent[k])]
    if wrong:
        return [f"{policy_name} expects other observation shapes than task {task!r} sends: {_few(wrong)}"]
    return []


def _shapes_agree(want: dict[str, Any], have: dict[str, Any]) -> bool:
    a, b = want.get("shape"), have.get("shape")
    if not a or not b:
        return True
    return len(a) == len(b) and all(x == y or x in (None, -1) or y in (None, -1) for x, y in zip(a, b, strict=True))


def _shape(spec: dict[str, Any]) -> str:
    return json.dumps(spec.get("shape")) if spec.get("shape") else spec.get("kind", "?")


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def published_schema(url: str, namespace: str, policy: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The observation schema a running policy published in Redis, if one has (None otherwise)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            from rolloutq.broker.keys import Keys

            raw = client.hget(Keys(namespace).policy_meta(policy), "metadata")
        finally:
            client.close()
        return None if raw is None else dict(json.loads(raw).get("observation_schema") or {})
    except Exception:
        return None
