"""The run's folder as a user meets it: `--out` refuses a folder holding something unless
`--overwrite` (which clears the earlier run's results), every run leaves its Redis URL there
(readable by its user only), and `top`/`health --run-dir` find that Redis, say what they see,
and survive it going away."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import redis
from rolloutq.broker.embedded import EmbeddedRedis

SETUP_ERROR = 4


def rolloutq(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUTQ_")}
    env.setdefault("MUJOCO_GL", "egl")
    return subprocess.run([sys.executable, "-m", "rolloutq.controller", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_out_that_holds_something_is_refused(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    proc = rolloutq("eval", "--backend", "null", "--task", "reach", "--out", str(tmp_path))
    assert proc.returncode == SETUP_ERROR, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --out {tmp_path} is not empty; name a new folder, or add --overwrite to replace the results of the "
        "run written there")
    assert (tmp_path / "summary.json").read_text() == "{}"


def test_overwrite_clears_the_earlier_run_and_the_run_writes_its_redis_url(tmp_path, redis_url):
    """An external run whose policy never appears: it fails (exit 1, one line), but only after it prepared
    its folder, so the folder shows what --overwrite did."""
    out = tmp_path / "run"
    (out / "videos").mkdir(parents=True)
    for name in ("videos/episode_0003.gif", "summary.json", "episodes.jsonl", "report.md", "round_trip_ms.png"):
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    proc = rolloutq("eval", "--mode", "external", "--redis-url", redis_url, "--task", "reach", "--out", str(out),
                    "--overwrite", "--set", "serve.health_check_timeout_s=0.3", "--set", "progress=false")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: policy 'default' has published no metadata")
    assert f"rolloutq top --run-dir {out}" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "notes.txt", "redis.url"]
    assert (out / "redis.url").read_text().strip() == redis_url
    assert stat.S_IMODE((out / "redis.url").stat().st_mode) == 0o600


def test_health_and_top_read_the_run_dir_and_say_what_they_see(tmp_path):
    server = EmbeddedRedis().start()
    try:
        (tmp_path / "redis.url").write_text(server.url + "\n")
        health = rolloutq("health", "--run-dir", str(tmp_path), "--policy", "pi")
        assert health.returncode == 1
        assert health.stdout.strip() == (f"no worker has published metadata for policy 'pi' on {server.url} "
                                         "(namespace 'rq'): none runs yet, or its model is still loading")
        top = rolloutq("top", "--run-dir", str(tmp_path), "--once", "--interval", "0.1")
        assert top.returncode == 0, top.stderr
        assert "rolloutq queues" in top.stdout and "workers" in top.stdout
    finally:
        server.cleanup()
    gone = rolloutq("top", "--run-dir", str(tmp_path), "--once")
    assert gone.returncode == 1 and "Traceback" not in gone.stderr
    assert gone.stderr.startswith(f"error: Redis at {server.url} does not answer")


def test_top_ends_with_a_line_when_the_watched_redis_goes_away(tmp_path):
    server = EmbeddedRedis().start()
    (tmp_path / "redis.url").write_text(server.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUTQ_")}
    proc = subprocess.Popen([sys.executable, "-m", "rolloutq.controller", "top", "--run-dir", str(tmp_path),
                             "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        watcher = redis.Redis.from_url(server.url)
        while len(watcher.client_list()) < 2 and proc.poll() is None:  # until top is connected and watching
            time.sleep(0.1)
        watcher.close()
        server.cleanup()
        out, err = proc.communicate(timeout=60)
    finally:
        server.cleanup()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "went away (the run it served has ended?); top stops" in out
