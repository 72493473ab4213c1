"""One configuration file for every command (controller/config.py): TOML and YAML read into the
settings dataclasses, flags over the file, one clear line for a wrong key or type, passwords masked
in what is printed, and `rolloutq eval --help` short."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer.main
from rolloutq.controller.cli import app
from rolloutq.controller.config import ConfigError, PolicyWorkerConfig, SimWorkerConfig, eval_settings, load, to_toml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]

FILE = """
episodes = 12
task = "reach"
backend = "cnn"
mode = "attach"
envs_per_sim = 2
replica_env = ["HF_TOKEN"]

[task_options]
image_size = 32
max_steps = 60

[backend_options]
action_dims = {arm = 2}

[redis]
url = "redis://controller:hunter2@redis.example:6379/0"
namespace = "lab"

[worker.batch]
max_batch_size = 64
max_wait_ms = 2.5

[serve]
replicas = 2
resources = {policy_node = 1}

[client]
deadline_s = 20.0

[autoscale]
enabled = true
interval_s = 1.0

[autoscale.policy]
min_replicas = 2
max_replicas = 6
"""

YAML = """
episodes: 12
task: reach
backend: cnn
mode: attach
envs_per_sim: 2
replica_env: [HF_TOKEN]
task_options: {image_size: 32, max_steps: 60}
backend_options: {action_dims: {arm: 2}}
redis: {url: "redis://controller:hunter2@redis.example:6379/0", namespace: lab}
worker: {batch: {max_batch_size: 64, max_wait_ms: 2.5}}
serve: {replicas: 2, resources: {policy_node: 1}}
client: {deadline_s: 20.0}
autoscale: {enabled: true, interval_s: 1.0, policy: {min_replicas: 2, max_replicas: 6}}
"""


@pytest.fixture(autouse=True)
def _no_rolloutq_environment(monkeypatch):
    """The shell running the tests may point at its own Redis or sweep: the tests set what they read."""
    import os

    for name in [k for k in os.environ if k.startswith("ROLLOUTQ_")]:
        monkeypatch.delenv(name)


def show(*args: str, env: dict[str, str] | None = None) -> dict:
    got = CliRunner().invoke(app, ["config", "show", *args], env=env)
    assert got.exit_code == 0, got.output
    return tomllib.loads(got.stdout)


def test_a_file_is_read_into_the_settings_and_written_back_the_same(tmp_path):
    path = tmp_path / "eval.toml"
    path.write_text(FILE)
    s = eval_settings(path)
    assert (s.episodes, s.task, s.mode, s.envs_per_sim) == (12, "reach", "attach", 2)
    assert s.task_options == {"image_size": 32, "max_steps": 60}
    assert s.worker.batch.max_batch_size == 64 and s.worker.batch.max_wait_ms == 2.5
    assert s.serve.replicas == 2 and s.serve.resources == {"policy_node": 1.0}
    assert s.autoscale.enabled and s.autoscale.policy.max_replicas == 6
    # keys the file does not hold are derived from the ones it does
    assert s.autoscale.sims.envs_per_sim == 2 and s.client.reply_timeout_s == 20.0
    assert s.worker.policy == s.policy == "default"

    yaml_path = tmp_path / "eval.yaml"
    yaml_path.write_text(YAML)
    assert eval_settings(yaml_path) == s

    s.redis.url = "redis://127.0.0.1:6379/0"  # no password: nothing to mask, so the text reads back whole
    again = tmp_path / "again.toml"
    again.write_text(to_toml(s))
    assert eval_settings(again) == s


def test_flags_win_over_the_file_and_options_merge_key_by_key(tmp_path):
    path = tmp_path / "eval.toml"
    path.write_text(FILE)
    got = show("--config", str(path), "--episodes", "3", "--mode", "embedded", "--task-option", "max_steps=24",
               "-o", "hidden=[8, 8]", "--set", "serve.replicas=5", "--set", "redis.namespace=007",
               "--set", "progress=false", "--set", "worker.batch.max_wait_ms=1")
    assert got["episodes"] == 3 and got["mode"] == "embedded" and got["progress"] is False
    assert got["task"] == "reach" and got["envs_per_sim"] == 2  # from the file
    assert got["task_options"] == {"image_size": 32, "max_steps": 24}
    assert got["backend_options"] == {"action_dims": {"arm": 2}, "hidden": [8, 8]}
    assert got["serve"]["replicas"] == 5 and got["serve"]["resources"] == {"policy_node": 1.0}
    assert got["redis"]["namespace"] == "007"  # a string key stays a string whatever it looks like
    assert got["worker"]["batch"] == {"max_batch_size": 64, "max_wait_ms": 1.0, "max_inflight": 0}
    assert show("--autoscale")["autoscale"]["enabled"] is True and show()["autoscale"]["enabled"] is False


def test_the_environment_is_read_at_the_edge_and_flags_still_win(tmp_path):
    url = "redis://sim:pw@10.0.0.5:6379/0"
    got = show(env={"ROLLOUTQ_REDIS_URL": url, "ROLLOUTQ_RUN": "nightly"})
    assert got["redis"]["url"] == "redis://sim:***@10.0.0.5:6379/0" and got["run_id"] == "nightly"
    got = show("--redis-url", "redis://10.0.0.6:6379/0", env={"ROLLOUTQ_REDIS_URL": url})
    assert got["redis"]["url"] == "redis://10.0.0.6:6379/0"


def test_config_show_masks_passwords(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text(YAML)
    got = CliRunner().invoke(app, ["config", "show", "--config", str(path), "--set",
                                   "autoscale.prometheus_url=http://admin:pr0m@prom:9090"])
    assert got.exit_code == 0, got.output
    assert "hunter2" not in got.output and "pr0m" not in got.output
    text = tomllib.loads(got.stdout)
    assert text["redis"]["url"] == "redis://controller:***@redis.example:6379/0"
    assert text["autoscale"]["prometheus_url"] == "http://admin:***@prom:9090"
    assert text["replica_env"] == ["HF_TOKEN"] and "env_vars" not in text["serve"]  # names, never values


@pytest.mark.parametrize(("text", "suffix", "expected"), [
    ("episdes = 3\n", ".toml", "unknown key episdes; did you mean episodes"),
    ("[worker.batch]\nmax_batch = 3\n", ".toml", "unknown key worker.batch.max_batch; did you mean max_batch_size"),
    ('episodes = "eight"\n', ".toml", "episodes must be an integer, not 'eight' (a string)"),
    ("serve:\n  replicas: 1.5\n", ".yaml", "serve.replicas must be an integer, not 1.5 (a number)"),
    ('mode = "local"\n', ".toml", "mode must be one of embedded, external, attach, not 'local'"),
    ("episodes = [\n", ".toml", "not valid TOML"),
    ("episodes: [1\n", ".yml", "not valid YAML at line"),
])
def test_a_wrong_file_is_one_line_and_exit_status_2(tmp_path, text, suffix, expected):
    """As a user sees it: the real command in a subprocess, no traceback, nothing started."""
    path = tmp_path / f"eval{suffix}"
    path.write_text(text)
    got = subprocess.run([sys.executable, "-m", "rolloutq.controller", "eval", "--config", str(path), "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert got.returncode == 2, got.stderr
    assert got.stderr.strip() == got.stderr.strip().splitlines()[0], got.stderr  # one line
    assert got.stderr.startswith(f"error: {path}: ") and expected in got.stderr, got.stderr
    assert "Traceback" not in got.stderr + got.stdout
    assert not (tmp_path / "run").exists()


def test_a_typo_lists_the_keys_of_its_table():
    got = CliRunner().invoke(app, ["config", "show", "--set", "client.deadline=5"])
    assert got.exit_code == 2
    line = got.output.strip()
    assert "\n" not in line and "unknown key client.deadline; did you mean deadline_s?" in line
    assert "keys of [client]: " in line and "reply_timeout_s" in line


def test_cross_key_and_flag_errors_are_one_line_too():
    runner = CliRunner()
    got = runner.invoke(app, ["config", "show", "--set", "autoscale.policy.min_replicas=5"])
    assert got.exit_code == 2 and got.output.strip() == (
        "error: autoscale.policy.min_replicas (5) must not exceed autoscale.policy.max_replicas (4)")
    got = runner.invoke(app, ["config", "show", "--set", "episodes"])
    assert got.exit_code == 2 and "--set 'episodes': write key=value" in got.output
    got = runner.invoke(app, ["config", "show", "--task-option", "image_size"])
    assert got.exit_code == 2 and "--task-option 'image_size': write key=value" in got.output


def test_the_removed_flags_are_refused():
    runner = CliRunner()
    for flag in ("--external", "--no-deploy", "--poll-ms", "--sim-poll-ms", "--dispatch", "--min-replicas"):
        got = runner.invoke(app, ["eval", flag])
        assert got.exit_code == 2 and "No such option" in got.output, (flag, got.output)


def test_eval_help_fits_on_one_screen_and_every_option_says_what_it_does():
    command = typer.main.get_command(app).commands["eval"]
    ctx = command.make_context("eval", [], resilient_parsing=True)
    options = [p for p in command.get_params(ctx) if not p.hidden]
    assert len(options) < 20, [p.opts for p in options]
    assert all(p.help for p in options), [p.opts for p in options if not p.help]
    got = CliRunner().invoke(app, ["eval", "--help"], terminal_width=200)
    assert got.exit_code == 0 and "--config" in got.output and "--mode" in got.output


def test_worker_commands_read_their_part_of_the_same_file(tmp_path):
    path = tmp_path / "eval.toml"
    path.write_text(FILE)
    policy = load(PolicyWorkerConfig, path, partial=True)  # eval's own keys (episodes, mode, ...) are left alone
    assert (policy.backend, policy.task, policy.redis.namespace) == ("cnn", "reach", "lab")
    assert policy.worker.batch.max_batch_size == 64 and policy.backend_options == {"action_dims": {"arm": 2}}
    sim = load(SimWorkerConfig, path, {"envs_per_sim": 8}, partial=True)
    assert sim.envs_per_sim == 8 and sim.client.deadline_s == 20.0 and sim.redis.namespace == "lab"
    path.write_text(FILE + '\n[client.extra]\nx = 1\n')
    with pytest.raises(ConfigError, match=r"unknown key client\.extra"):  # the tables it reads are checked
        load(SimWorkerConfig, path, partial=True)


def test_the_readme_example_configuration_is_valid(tmp_path):
    import re

    block = re.search(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md shows no configuration file"
    path = tmp_path / "readme.toml"
    path.write_text(block.group(1))
    s = eval_settings(path)
    assert s.serve.resources == {"policy_node": 1.0} and s.worker.batch.max_batch_size == 64
