"""One configuration for every command: a TOML or YAML file with the command's flags over it,
checked against the settings dataclasses and turned into them here, at the CLI edge.

The file mirrors `EvalSettings`: top-level keys are its fields, tables are the settings it carries
(`[redis]`, `[worker]`, `[worker.batch]`, `[serve]`, `[client]`, `[autoscale]`,
`[autoscale.policy]`, `[autoscale.sims]`, `[task_options]`, `[backend_options]`). `policy-worker`
and `sim-worker` read their part of the same file. Layers, lowest first: the command's defaults,
the file, what the command read from the environment, its flags (`--set key=value` included).
Nothing here reads the environment: the CLI passes down what it read.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml
from rolloutq.broker.settings import ClientSettings, RedisSettings, WorkerSettings
from rolloutq.controller.errors import ControllerError

if TYPE_CHECKING:
    from rolloutq.controller.eval import EvalSettings

T = TypeVar("T")


class ConfigError(ControllerError):
    """A configuration that cannot be used; the message is one line naming the key and what it expects."""


class Mode(enum.StrEnum):
    """Where the policy pool and the simulators of `rolloutq eval` run."""

    embedded = "embedded"
    """A local Ray (or `--address`), an embedded Redis unless `--redis-url`, the policy deployed on Serve."""
    external = "external"
    """No Ray: policy workers and simulators are separate processes attached to `--redis-url`."""
    attach = "attach"
    """A policy pool already serves on `--redis-url`; the simulators run as Ray actors."""


DERIVED = frozenset({"worker.policy", "worker.worker_id", "serve.env_vars", "serve.external_scaler",
                     "autoscale.sims.envs_per_sim", "ray_metrics"})
"""Fields the file does not hold: set from other keys (`policy`, `envs_per_sim`, `replica_env`), by a
flag of their own command, or by the run itself."""

CHOICES = {"mode": tuple(m.value for m in Mode)}
MINIMUM = {"episodes": 1, "sims": 1, "envs_per_sim": 1, "action_horizon": 0, "video_episodes": 0,
           "timeout_s": 0, "sweep_ttl_s": 0, "max_sim_errors": 0, "max_attempts": 1, "sim_num_cpus": 0,
           "sim_num_gpus": 0, "serve.replicas": 1, "serve.num_cpus": 0, "serve.num_gpus": 0,
           "worker.shards": 1, "worker.batch.max_batch_size": 1, "worker.batch.max_wait_ms": 0,
           "worker.batch.max_inflight": 0, "client.deadline_s": 0, "client.reply_timeout_s": 0,
           "autoscale.policy.min_replicas": 0, "autoscale.policy.max_replicas": 1, "autoscale.sims.max_sims": 0}

HEADER = "# rolloutq configuration (`rolloutq eval --config FILE` runs it); secrets are masked.\n"

_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path (a string)",
          dict: "a table", list: "a list"}


@dataclass
class PolicyWorkerConfig:
    """The keys `rolloutq policy-worker` reads; the file's other top-level keys are eval's."""

    backend: str = "cnn"
    backend_options: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    """Fit a generic backend (cnn) to this task's observation and action layout ("": none)."""
    task_options: dict[str, Any] = field(default_factory=dict)
    policy: str = "default"
    redis: RedisSettings = field(default_factory=RedisSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)


@dataclass
class SimWorkerConfig:
    """The keys `rolloutq sim-worker` reads; the file's other top-level keys are eval's."""

    envs_per_sim: int = 4
    mujoco_gl: str = "egl"
    redis: RedisSettings = field(default_factory=RedisSettings)
    client: ClientSettings = field(default_factory=ClientSettings)


class _Raw(str):
    """A value typed on the command line (`--set`): read as the type its key expects."""


def read_file(path: Path) -> dict[str, Any]:
    """A TOML (.toml) or YAML (.yaml, .yml) file as a plain dict."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
        data = {} if data is None else data
    else:
        raise ConfigError(f"{path}: name it .toml, .yaml or .yml (the suffix says how to read it)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must hold a table of settings, not {_kind(data)}")
    return data


def merge(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Later layers win, table by table; None means "not given" and never wins."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if value is None:
                continue
            if isinstance(value, Mapping):
                out[key] = merge(out[key] if isinstance(out.get(key), dict) else None, value)
            else:
                out[key] = value
    return out


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """`--set serve.replicas=2 --set progress=false` -> {"serve": {"replicas": "2"}, "progress": "false"},
    each value read later as the type its key expects."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {pair!r}: write key=value, e.g. --set serve.replicas=2")
        *tables, name = key.strip().split(".")
        node = out
        for t in tables:
            node = node.setdefault(t, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {t} is given as a value and as a table")
        node[name] = _Raw(value)
    return out


def parse_options(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """`key=value` pairs of task or backend options; values are JSON when they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ConfigError(f"{flag} {pair!r}: write key=value, e.g. {flag} image_size=64")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load(cls: type[T], path: Path | None, overrides: Mapping[str, Any] | None = None,
         base: Mapping[str, Any] | None = None, *, partial: bool = False) -> T:
    """`cls` from `base`, the file at `path` and `overrides`. `partial`: the file's top-level keys
    that `cls` does not have are another command's and are left alone (its tables are checked)."""
    data = read_file(path) if path else {}
    if path:
        build(cls, merge(base, data), str(path), partial=partial)  # so an error names the file
    return build(cls, merge(base, data, overrides), "command line", partial=partial)


def eval_settings(path: Path | None, overrides: Mapping[str, Any] | None = None,
                  base: Mapping[str, Any] | None = None) -> EvalSettings:
    """The settings of one evaluation run, with the keys the file does not hold derived."""
    from rolloutq.controller.eval import EvalSettings

    s = load(EvalSettings, path, overrides, base)
    s.worker.policy = s.policy
    s.autoscale.sims.envs_per_sim = s.envs_per_sim
    s.client.reply_timeout_s = min(s.client.reply_timeout_s, s.client.deadline_s)
    p = s.autoscale.policy
    if p.min_replicas > p.max_replicas:
        raise ConfigError(f"autoscale.policy.min_replicas ({p.min_replicas}) must not exceed "
                          f"autoscale.policy.max_replicas ({p.max_replicas})")
    return s


def replica_env(names: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The values of `replica_env` from the shell (secrets such as HF_TOKEN stay out of files)."""
    missing = [n for n in names if n not in environ]
    if missing:
        raise ConfigError(f"replica_env names {', '.join(missing)}, which this shell does not set")
    return {n: environ[n] for n in names}


def build(cls: type[T], data: Mapping[str, Any], source: str, *, partial: bool = False) -> T:
    """`cls(**data)`, nested tables into nested dataclasses, each value checked against its field's type."""
    return _build(cls, data, source, "", partial)


def _build(cls: Any, data: Mapping[str, Any], source: str, prefix: str, partial: bool = False) -> Any:
    hints = get_type_hints(cls)
    names = sorted(f.name for f in dataclasses.fields(cls) if f.init and prefix + f.name not in DERIVED)
    kwargs = {}
    for key, value in data.items():
        key = str(key)
        if key not in names:
            if partial and not prefix:
                continue
            raise ConfigError(_unknown(source, prefix, key, names))
        kwargs[key] = _value(hints[key], value, source, prefix + key)
    return cls(**kwargs)


def _value(tp: Any, value: Any, source: str, name: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return None if value is None else _value(inner, value, source, name)
    if isinstance(value, _Raw) and tp not in (str, Path):
        value = _literal(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _expected(source, name, "a table", value)
        return _build(tp, value, source, name + ".")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _expected(source, name, "a table", value)
        return {str(k): _value(args[1], v, source, f"{name}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _expected(source, name, "a list", value)
        return origin(_value(args[0], v, source, f"{name}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {bool: isinstance(value, bool), int: numeric and isinstance(value, int), float: numeric,
          str: isinstance(value, str), Path: isinstance(value, (str, Path))}[tp]
    if not ok:
        raise _expected(source, name, _KINDS[tp], value)
    value = tp(value)
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"{source}: {name} must be one of {', '.join(CHOICES[name])}, not {value!r}")
    if name in MINIMUM and value < MINIMUM[name]:
        raise ConfigError(f"{source}: {name} must be at least {MINIMUM[name]}, not {value!r}")
    return value


def _literal(raw: str) -> Any:
    """A command-line value as TOML reads it (`2`, `0.5`, `true`, `[1, 2]`, `{a = 1}`); else the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return str(raw)


def _kind(value: Any) -> str:
    for tp in (bool, int, float, str, dict, list):
        if isinstance(value, tp):
            return _KINDS[tp]
    return type(value).__name__


def _expected(source: str, name: str, what: str, value: Any) -> ConfigError:
    shown = repr(value if not isinstance(value, _Raw) else str(value))
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return ConfigError(f"{source}: {name} must be {what}, not {shown} ({_kind(value)})")


def _unknown(source: str, prefix: str, key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(near)}? " if near else ""
    table = f"[{prefix[:-1]}]" if prefix else "the top level"
    return f"{source}: unknown key {prefix}{key}; {hint}keys of {table}: {', '.join(valid)}"


def mask(text: str) -> str:
    """URLs with their password replaced by ***."""
    return re.sub(r"(://[^:/@\s]*:)[^@/\s]+@", r"\1***@", text)


def to_toml(settings: Any) -> str:
    """The settings as a file `load` reads back (passwords in URLs masked, unset values left out)."""
    lines: list[str] = []
    _table(_plain(settings, ""), [], lines)
    return HEADER + "\n".join(lines).lstrip("\n") + "\n"


def _plain(value: Any, prefix: str) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name), prefix + f.name + ".") for f in dataclasses.fields(value)
                if prefix + f.name not in DERIVED and getattr(value, f.name) is not None}
    if isinstance(value, Mapping):
        return {str(k): _plain(v, "") for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v, "") for v in value]
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append(f"\n[{'.'.join(_key(p) for p in path)}]")
    lines.extend(f"{_key(k)} = {_scalar(v)}" for k, v in scalars.items())
    for k, v in tables.items():
        _table(v, [*path, k], lines)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_scalar(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to a configuration file")


def _string(text: str) -> str:
    escaped = "".join(c if c >= " " and c not in '"\\\x7f' else (f"\\{c}" if c in '"\\' else f"\\u{ord(c):04x}")
                      for c in text)
    return f'"{escaped}"'
