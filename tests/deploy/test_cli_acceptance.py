"""Every `rolloutq ...` command in compose.yaml (services and health checks) is one the project's CLI
accepts: parsed by click's own parser, with the service's environment, without running it."""

from __future__ import annotations

import os
import re

import pytest
import typer.main

try:  # recent Typer releases carry their own copy of click: use the parser the CLI really uses
    from typer._click import exceptions as click_errors
    from typer._click.core import Context
except ImportError:  # pragma: no cover
    from click import Context
    from click import exceptions as click_errors

from tests.deploy.composefile import env_for_tests, load, rolloutq_services

DOC = load(env_for_tests())
SERVICES = rolloutq_services(DOC)


def _group(command: str):
    """The click group that owns `command` (every command is mounted on the main CLI)."""
    from rolloutq.controller.cli import app

    group = typer.main.get_command(app)
    assert command in group.commands, f"`rolloutq {command}` is not a command of the CLI"
    return group


def parse(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Context:
    assert argv[0] == "rolloutq", argv
    name, args = argv[1], argv[2:]
    group = _group(name)
    for k in list(os.environ):
        if k.startswith("ROLLOUTQ_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    parent = Context(group, info_name="rolloutq")
    command = group.get_command(parent, name)
    return command.make_context(name, list(args), parent=parent)


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_command_parses(service, monkeypatch):
    svc = SERVICES[service]
    ctx = parse(svc["command"], _env(svc), monkeypatch)
    assert ctx.params  # parsed, converted and validated (required options included)
    if "redis_url" in ctx.params:
        # its own ACL user (deploy/redis/users.acl.in), from the environment
        assert re.match(r"redis://(policy|sim|controller):[^@]+@redis:6379/0$", ctx.params["redis_url"])


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_environment_is_read_by_its_command(service, monkeypatch):
    """Each ROLLOUTQ_* variable a service sets is the envvar of one of its command's options."""
    svc = SERVICES[service]
    group = _group(svc["command"][1])
    command = group.commands[svc["command"][1]]
    envvars = {e for p in command.params for e in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])}
    unread = sorted(k for k in _env(svc) if k.startswith("ROLLOUTQ_") and k not in envvars)
    assert not unread, f"{service} sets {unread}, which `rolloutq {svc['command'][1]}` does not read"


@pytest.mark.parametrize("service", sorted(s for s, v in DOC["services"].items()
                                           if v.get("healthcheck", {}).get("test", [""])[1:2] == ["rolloutq"]))
def test_healthcheck_command_parses(service, monkeypatch):
    svc = DOC["services"][service]
    parse(svc["healthcheck"]["test"][1:], _env(svc), monkeypatch)


def test_a_wrong_flag_is_refused(monkeypatch):
    with pytest.raises(click_errors.UsageError, match="--no-such-flag"):
        parse(["rolloutq", "sim-worker", "--no-such-flag", "1"], {"ROLLOUTQ_RUN": "x"}, monkeypatch)
    with pytest.raises(click_errors.MissingParameter):
        parse(["rolloutq", "sim-worker"], {}, monkeypatch)


def test_exporter_port_is_the_one_compose_exposes(monkeypatch):
    svc = DOC["services"]["exporter"]
    ctx = parse(svc["command"], _env(svc), monkeypatch)
    assert str(ctx.params["port"]) in [str(p) for p in svc["expose"]]


def test_controller_writes_into_its_volume(monkeypatch):
    svc = DOC["services"]["controller"]
    ctx = parse(svc["command"], _env(svc), monkeypatch)
    assert ctx.params["mode"].value == "external"
    mounts = [v.split(":")[1] for v in svc["volumes"]]
    assert any(str(ctx.params["out"]).startswith(m) for m in mounts)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", ctx.params["run"])


def test_controller_configuration_is_the_one_the_other_services_use(monkeypatch):
    """The controller's flags, shown as the configuration they make: the policy and namespace that
    the policy and sim services read from the same .env, and a long wait for the model to load."""
    import tomllib

    from rolloutq.controller.cli import app
    from typer.testing import CliRunner

    doc = load(env_for_tests(ROLLOUTQ_POLICY="g1", ROLLOUTQ_NAMESPACE="lab", ROLLOUTQ_TASK="reach"))
    svc = doc["services"]["controller"]
    assert svc["command"][:2] == ["rolloutq", "eval"]
    for k in [k for k in os.environ if k.startswith("ROLLOUTQ_")]:
        monkeypatch.delenv(k)
    got = CliRunner().invoke(app, ["config", "show", *svc["command"][2:]], env=_env(svc))
    assert got.exit_code == 0, got.output
    config = tomllib.loads(got.stdout)
    assert config["mode"] == "external" and config["task"] == "reach" and config["progress"] is False
    assert config["policy"] == "g1" and config["redis"]["namespace"] == "lab"
    assert config["serve"]["health_check_timeout_s"] >= 600
    assert config["redis"]["url"].startswith("redis://controller:***@redis:6379/")
    for name in ("policy-cpu", "sim"):
        env = _env(doc["services"][name])
        assert (env["ROLLOUTQ_NAMESPACE"], env.get("ROLLOUTQ_POLICY", "g1")) == ("lab", "g1"), name
