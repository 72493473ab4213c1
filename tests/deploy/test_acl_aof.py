"""The shipped ACL file and AOF persistence together: after `kill -9` and a restart, Redis replays
the AOF's MULTI/EXEC blocks (XREADGROUP's deliveries, the sweep's scripts) under the default
user's ACL, so the file must not make the default user `-@all` (it stays `off`: nobody logs in
as it)."""

from __future__ import annotations

import importlib.util
import secrets
import time

import redis
from rolloutq.broker.embedded import EmbeddedRedis, free_port

from tests.fault.conftest import ROOT, redis_binary

ROLES = ("admin", "sim", "policy", "controller")


def _render(passwords: dict[str, str]) -> str:
    spec = importlib.util.spec_from_file_location("render_acl", ROOT / "deploy/redis/render_acl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.render(passwords)


def test_pending_entries_survive_kill9_under_the_shipped_acl(tmp_path):
    passwords = {r: secrets.token_urlsafe(16) for r in ROLES}
    acl = tmp_path / "users.acl"
    acl.write_text(_render(passwords))
    data = tmp_path / "redis"
    data.mkdir()
    port = free_port()
    args = {"binary": redis_binary(), "port": port, "dir": str(data), "appendonly": True,
            "appendfsync": "always", "extra_args": ["--aclfile", str(acl)]}
    server = EmbeddedRedis(**args).start()
    url = f"redis://admin:{passwords['admin']}@127.0.0.1:{port}/0"
    try:
        r = redis.Redis.from_url(url)
        r.xgroup_create("rq:req:{p#0}", "workers", id="0", mkstream=True)
        for i in range(3):
            r.xadd("rq:req:{p#0}", {"i": str(i)})
        assert len(r.xreadgroup("workers", "w1", {"rq:req:{p#0}": ">"}, count=3)[0][1]) == 3
        assert r.xpending("rq:req:{p#0}", "workers")["pending"] == 3
        r.close()
        server.kill()
        server = EmbeddedRedis(**args).start()
        r = redis.Redis.from_url(url)
        for _ in range(50):
            try:
                pending = r.xpending("rq:req:{p#0}", "workers")["pending"]
                break
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.1)
        assert pending == 3, "the AOF replay dropped XREADGROUP's deliveries"
        assert "NOPERM" not in (data / "redis.log").read_text()
        r.close()
    finally:
        server.stop()
