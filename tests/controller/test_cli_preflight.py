"""A user's setup mistakes end `rolloutq eval`, `policy-worker` and `sim-worker` before anything heavy
starts: one line `error: ...` per problem, no traceback, exit status 4 (docs: `rolloutq eval --help`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

SETUP_ERROR = 4
DEAD_REDIS = "redis://someone:s3cret@127.0.0.1:1/0"


def rolloutq(*args: str, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUTQ_")}
    env.setdefault("MUJOCO_GL", "egl")
    return subprocess.run([sys.executable, "-m", "rolloutq.controller", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def test_unknown_backend_and_task_are_both_named_and_nothing_is_written(tmp_path):
    out = tmp_path / "run"
    proc = rolloutq("eval", "--backend", "nosuch", "--task", "nosuchtask", "--out", str(out))
    assert proc.returncode == SETUP_ERROR, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 2, proc.stderr
    assert "no policy backend 'nosuch'; available: " in lines[0] and "visuomotor" in lines[0]
    assert "no task 'nosuchtask'; available: " in lines[1] and "reach" in lines[1]
    assert not out.exists()


@pytest.mark.parametrize(("task", "engine", "venv"), [("libero", "libero", ".venv-libero"),
                                                   ("g1-isaaclab", "isaaclab", ".venv-isaaclab")])
def test_a_task_whose_simulator_lives_in_another_venv_says_which(tmp_path, task, engine, venv):
    import importlib.util

    if importlib.util.find_spec(engine) is not None:
        pytest.skip(f"{engine} is installed in this Python: the task can run here")
    out = tmp_path / "run"
    proc = rolloutq("eval", "--task", task, "--backend", "null", "--episodes", "1", "--out", str(out))
    assert proc.returncode == SETUP_ERROR, proc.stderr
    (line,) = error_lines(proc)
    assert f"task {task!r} needs {engine}" in line and f"{venv}/bin/rolloutq" in line
    assert not out.exists()


def test_a_checkpoint_that_does_not_exist(tmp_path):
    proc = rolloutq("eval", "--backend-option", f"checkpoint={tmp_path / 'nope'}", "--out", str(tmp_path / "run"))
    assert proc.returncode == SETUP_ERROR, proc.stderr
    assert error_lines(proc) == [f"error: --backend-option checkpoint={tmp_path / 'nope'}: no such file or folder"]


def test_an_unreachable_redis_names_its_url_with_the_password_masked(tmp_path):
    proc = rolloutq("eval", "--mode", "external", "--redis-url", DEAD_REDIS, "--out", str(tmp_path / "run"))
    assert proc.returncode == SETUP_ERROR, proc.stderr
    (line,) = error_lines(proc)
    assert "Redis at redis://someone:***@127.0.0.1:1/0 did not answer" in line and "s3cret" not in proc.stderr
    assert "check that redis-server runs there" in line


def test_a_policy_that_does_not_fit_the_task(tmp_path):
    proc = rolloutq("eval", "--backend", "cnn", "--task", "g1-pickplace", "--out", str(tmp_path / "run"))
    assert proc.returncode == SETUP_ERROR, proc.stderr
    (line,) = error_lines(proc)
    assert "policy backend 'cnn' expects observations that task 'g1-pickplace' does not send: state.joints" in line


def test_a_published_policy_that_does_not_fit_the_task(tmp_path, redis_url):
    """External mode: the schema a running policy published in Redis is checked against the task."""
    import json

    import redis
    from rolloutq.broker.keys import Keys

    schema = {"video.ego_view": {"dtype": "uint8", "shape": [1, 2, 256, 256, 3]},
              "state.joints": {"dtype": "float32", "shape": [1, 1, 7]}}
    redis.Redis.from_url(redis_url).hset(Keys("rq").policy_meta("default"),
                                         mapping={"metadata": json.dumps({"observation_schema": schema})})
    proc = rolloutq("eval", "--mode", "external", "--redis-url", redis_url, "--task", "reach",
                    "--out", str(tmp_path / "run"))
    assert proc.returncode == SETUP_ERROR, proc.stderr
    (line,) = error_lines(proc)
    assert "the running policy expects observations that task 'reach' does not send" in line


def test_policy_worker_refuses_a_backend_that_does_not_fit_its_task(redis_url):
    proc = rolloutq("policy-worker", "--backend", "visuomotor", "--option", "checkpoint=/no/such/dir",
                    "--task", "reach", "--redis-url", redis_url)
    assert proc.returncode == SETUP_ERROR, proc.stderr
    assert error_lines(proc) == ["error: --backend-option checkpoint=/no/such/dir: no such file or folder"]


def test_policy_worker_with_an_unreachable_redis_says_so_and_stops_on_sigterm():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUTQ_")}
    proc = subprocess.Popen([sys.executable, "-m", "rolloutq.controller", "policy-worker", "--backend", "null",
                             "--redis-url", DEAD_REDIS], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stderr.readline()
        while line and "did not answer" not in line:
            line = proc.stderr.readline()
        assert "Redis at redis://someone:***@127.0.0.1:1/0 did not answer" in line and "waiting for it" in line
        time.sleep(1.0)  # inside its retries
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = proc.stderr.read()
    assert "Traceback" not in rest, rest[-3000:]
    assert rc == 0, rest[-2000:]


def test_sim_worker_says_at_once_that_its_sweep_does_not_exist_and_gives_up(redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUTQ_")}
    proc = subprocess.Popen([sys.executable, "-m", "rolloutq.controller", "sim-worker", "--run", "nosuch-run",
                             "--redis-url", redis_url, "--wait-for-sweep-s", "3"], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stderr.readline()
        assert first.startswith("no sweep 'nosuch-run' on redis://") and "waiting up to 3 s" in first, first
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = proc.stderr.read()
    assert "Traceback" not in rest, rest
    assert rc == SETUP_ERROR
    assert [x for x in rest.splitlines() if x.startswith("error: ")] == [
        f"error: no sweep 'nosuch-run' on {redis_url} (namespace 'rq') after 3 s: start `rolloutq eval --mode "
        "external --run nosuch-run` first, or check --run, --redis-url and --namespace"]


def test_sim_worker_with_an_unreachable_redis():
    proc = rolloutq("sim-worker", "--run", "r1", "--redis-url", DEAD_REDIS)
    assert proc.returncode == SETUP_ERROR, proc.stderr
    (line,) = error_lines(proc)
    assert "Redis at redis://someone:***@127.0.0.1:1/0 did not answer" in line


@pytest.mark.parametrize("verbose", [False, True])
def test_a_project_error_is_one_line_unless_verbose(tmp_path, verbose):
    """`top --run-dir` of a folder that holds no run: the project's error as one line; --verbose adds the
    traceback."""
    proc = rolloutq("top", "--run-dir", str(tmp_path), *(["--verbose"] if verbose else []))
    assert proc.returncode == SETUP_ERROR
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: {tmp_path} holds no redis.url: is it the --out folder of a `rolloutq eval` that has "
                    "started?")
    assert ("Traceback" in proc.stderr) == verbose
