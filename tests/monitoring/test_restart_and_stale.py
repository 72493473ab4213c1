"""What the monitoring readers report after a Redis crash and after workers die (issue 20 §4).

A real redis-server with AOF and the shipped ACL roles: the queue probe (exporter, `rolloutq top`,
autoscaler) must not take Redis 7.0's post-restart consumer-group `lag` at face value, and no
reader may count the stats record of a worker that stopped writing it.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time

import pytest
import redis
import redis.asyncio as aredis
from rolloutq.broker.embedded import EmbeddedRedis, free_port
from rolloutq.broker.keys import GROUP, Keys
from rolloutq.controller.follow import worker_stats
from rolloutq.monitoring.exporter import Exporter, ExporterSettings
from rolloutq.monitoring.queue import QueueProbe
from rolloutq.monitoring.top import TopSettings, snapshot_text, top_once

from tests.monitoring.conftest import ROOT, redis_binaries
from tests.monitoring.test_queue import scrape

pytestmark = pytest.mark.timeout(60)


def add_role(r: redis.Redis, role: str) -> str:
    """Create `role` as the shipped ACL file defines it (deploy/redis/users.acl.in); returns its url.

    Added at runtime rather than with `--aclfile`: the shipped file turns the `default` user off,
    and Redis 7.0 then drops every MULTI/EXEC block when it replays an AOF (redis/redis#14541), which
    would lose the pending entries this test needs after its restart.
    """
    line = next(x for x in (ROOT / "deploy/redis/users.acl.in").read_text().splitlines()
                if x.startswith(f"user {role} on {{{role}}} "))
    password = secrets.token_urlsafe(12)
    rules = re.findall(r"\([^)]*\)|\S+", line.split(f"{{{role}}}", 1)[1])
    r.acl_setuser(role, reset=True)
    r.execute_command("ACL", "SETUSER", role, "on", f">{password}", *rules)
    port = r.connection_pool.connection_kwargs["port"]
    return f"redis://{role}:{password}@127.0.0.1:{port}/0"


@pytest.fixture
def aof_redis(tmp_path):
    """Debian's redis-server 7 with AOF, in a data dir that survives kill -9 + restart."""
    if "system" not in redis_binaries():
        pytest.skip("no redis-server in /usr/bin (the ACL selectors need Redis 7)")
    data = tmp_path / "redis"
    data.mkdir()
    server = EmbeddedRedis(binary=redis_binaries()["system"], port=free_port(), dir=str(data),
                           appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


def answer_all(r: redis.Redis, stream: str, consumer: str = "w") -> int:
    """Read, ack and delete everything undelivered, as policy workers do."""
    n = 0
    while got := r.xreadgroup(GROUP, consumer, {stream: ">"}, count=39):
        ids = [eid for eid, _ in got[0][1]]
        pipe = r.pipeline(transaction=False)
        pipe.xack(stream, GROUP, *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()
        n += len(ids)
    return n


def rewrite_aof(r: redis.Redis) -> None:
    r.bgrewriteaof()
    deadline = time.monotonic() + 20
    while True:
        info = r.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            break
        assert time.monotonic() < deadline, "AOF rewrite did not finish"
        time.sleep(0.05)
    assert info["aof_last_bgrewrite_status"] == "ok"


def group_info(r: redis.Redis, stream: str) -> dict:
    return next(g for g in r.xinfo_groups(stream) if g["name"] in (GROUP, GROUP.encode()))


def test_lag_after_kill_9_restart_is_what_the_stream_holds(aof_redis):
    server, keys = aof_redis, Keys()
    stream = keys.requests("pol")
    admin = redis.Redis.from_url(server.url)
    admin.sadd(keys.policies(), "pol")
    admin.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for i in range(100):
        admin.xadd(stream, {"i": i})
    assert answer_all(admin, stream) == 100
    rewrite_aof(admin)  # the AOF's base now holds the group with entries-read 100
    for i in range(361):
        admin.xadd(stream, {"i": i})
    assert answer_all(admin, stream) == 361
    for i in range(7):  # 3 held by a worker (pending), 4 still queued
        admin.xadd(stream, {"i": i})
    admin.xreadgroup(GROUP, "w", {stream: ">"}, count=3)
    assert group_info(admin, stream)["lag"] == 4
    admin.close()

    server.kill()
    server.start()
    admin = redis.Redis.from_url(server.url)
    g = group_info(admin, stream)
    length = admin.xlen(stream)
    assert (length, g["pending"]) == (7, 3)
    if g["lag"] is None or g["lag"] <= length - g["pending"]:
        pytest.skip(f"this redis-server restores a consistent lag after an AOF restart ({g})")
    assert g["lag"] == 361 + 7  # what Redis 7.0 reports: entries-read came back as 100

    s = QueueProbe(admin, keys).poll().policy("pol").streams[0]
    assert (s.length, s.pending, s.lag, s.lag_source) == (7, 3, 4, "recount")
    assert s.oldest_undelivered_age_s is not None
    # Logged in as `controller` (the exporter's ACL role: no EVALSHA on request streams).
    controller = redis.Redis.from_url(add_role(admin, "controller"))
    s = QueueProbe(controller, keys).poll().policy("pol").streams[0]
    assert (s.lag, s.lag_source) == (4, "bound")
    assert s.oldest_undelivered_age_s is not None

    # Workers answer everything: the stream is empty, and Redis still reports hundreds undelivered.
    held = [eid for eid, _ in admin.xrange(stream, count=3)]
    admin.xack(stream, GROUP, *held)
    admin.xdel(stream, *held)
    assert answer_all(admin, stream) == 4
    assert admin.xlen(stream) == 0 and group_info(admin, stream)["lag"] > 300
    ex = Exporter(controller, ExporterSettings(port=0, addr="127.0.0.1"))
    port = ex.serve()
    try:
        assert ex.poll_once() is not None
        assert scrape(port)['rolloutq_queue_lag{policy="pol",shard="0"}'] == 0
        assert ex.snapshot.policy("pol").streams[0].lag_source == "recount"
    finally:
        ex.stop()


def test_missing_xinfo_lag_is_counted(mon_redis):
    """A queued entry deleted behind the group's position (a client that cancels) makes Redis
    report no lag at all."""
    r, keys = mon_redis.client, Keys("nil")
    stream = keys.requests("pol")
    r.sadd(keys.policies(), "pol")
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = [r.xadd(stream, {"i": i}) for i in range(10)]
    r.xreadgroup(GROUP, "w", {stream: ">"}, count=3)
    r.xdel(stream, ids[5])
    assert group_info(r, stream)["lag"] is None
    s = QueueProbe(r, keys).poll().policy("pol").streams[0]
    assert (s.lag, s.pending, s.lag_source) == (6, 3, "scan")


def write_records(r: redis.Redis, key: str) -> None:
    """10 worker records: 2 written just now, 7 by workers that died a minute ago, and 1 stamped
    an hour ahead (a worker with a skewed clock)."""
    sec, usec = r.time()
    now = sec + usec / 1e6
    records = {f"alive-{i}": now - 0.5 * i for i in range(2)}
    records.update({f"dead-{i}": now - 60 - i for i in range(7)})
    records["skewed"] = now + 3600
    r.hset(key, mapping={wid: json.dumps({"worker": wid, "ts": ts, "served_total": 100, "batches_total": 10,
                                          "busy_s_total": 1.0, "errors_total": {"expired": 1}})
                         for wid, ts in records.items()})


def test_only_fresh_worker_records_count(aof_redis):
    keys = Keys()
    key = keys.worker_stats("pol")
    admin = redis.Redis.from_url(aof_redis.url)
    controller_url = add_role(admin, "controller")
    admin.sadd(keys.policies(), "pol")
    write_records(admin, key)

    # The exporter and `rolloutq top` only read (as `controller`): 2 up, 8 stale, nothing deleted.
    controller = redis.Redis.from_url(controller_url)
    ex = Exporter(controller, ExporterSettings(port=0, addr="127.0.0.1"))
    port = ex.serve()
    try:
        ex.poll_once()
        m = scrape(port)
    finally:
        ex.stop()
    assert m['rolloutq_policy_replicas_up{policy="pol"}'] == 2
    assert m['rolloutq_policy_replicas_stale{policy="pol"}'] == 8
    snap = top_once(controller, TopSettings(interval_s=0.05))
    p = snap.policy("pol")
    assert (p.replicas_up, p.replicas_stale) == (2, 8)
    assert sorted(w.id for w in p.workers if w.fresh) == ["alive-0", "alive-1"]
    assert "skewed" in snapshot_text(snap)
    assert admin.hlen(key) == 10

    async def summary(url: str) -> dict:
        r = aredis.Redis.from_url(url)
        try:
            return await worker_stats(r, keys, "pol")
        finally:
            await r.aclose()

    # The run summary as `controller`: may not delete, counts only the 2 as reporting; what the
    # dead ones served before they died still counts in the totals.
    st = asyncio.run(summary(controller_url))
    assert (st["replicas_reporting"], st["replicas_stale"], st["served_total"]) == (2, 8, 1000)
    assert st["errors_total"] == {"expired": 10}
    assert admin.hlen(key) == 10
    # With a user allowed to write the hash (an embedded Redis), the stale records are deleted.
    st = asyncio.run(summary(aof_redis.url))
    assert (st["replicas_reporting"], st["replicas_stale"]) == (2, 8)
    assert sorted(k.decode() for k in admin.hkeys(key)) == ["alive-0", "alive-1"]
