"""Reading compose.yaml the way `docker compose` would, without Docker: YAML with merge keys,
`${VAR}` interpolation from an environment (the .env file), and each service's command as argv.

Only what rolloutq's compose file uses is supported: `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?message}`, `${VAR?message}` and `$$`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\})")


class MissingVariable(ValueError):
    pass


def load_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k, _, v = line.partition("=")
        env[k.strip()] = v.strip()
    return env


def variables(text: str) -> dict[str, str | None]:
    """Every variable the file refers to -> its operator (None, ':-', '-', ':?', '?')."""
    return {m.group(2): m.group(3) for m in _VAR.finditer(text) if m.group(2)}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name, op, arg = m.group(2), m.group(3), m.group(4)
        have = env.get(name)
        if op == ":-":
            return have if have else interpolate(arg, env)
        if op == "-":
            return have if have is not None else interpolate(arg, env)
        if op in (":?", "?"):
            if have is None or (op == ":?" and have == ""):
                raise MissingVariable(f"{name}: {arg}")
            return have
        return have or ""

    return _VAR.sub(sub, value)


def load(env: dict[str, str]) -> dict[str, Any]:
    """compose.yaml interpolated with `env` (as compose would with a .env file)."""
    return interpolate(load_raw(), env)


def env_for_tests(**overrides: str) -> dict[str, str]:
    """.env.example with every required (empty) password filled, plus overrides."""
    env = read_env_file(ENV_EXAMPLE)
    for k, v in env.items():
        if not v and (k.endswith("PASSWORD")):
            env[k] = f"test-{k.lower().replace('_', '-')}"
    env.update(overrides)
    return env


def rolloutq_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services whose command runs the project's CLI (`rolloutq ...`)."""
    return {name: svc for name, svc in doc["services"].items()
            if isinstance(svc.get("command"), list) and svc["command"][:1] == ["rolloutq"]}
