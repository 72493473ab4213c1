"""Queue metrics follow a known load, on every Redis version available (7.x and 6.2)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from rolloutq.broker.keys import GROUP, Keys
from rolloutq.broker.schema import Request
from rolloutq.monitoring.exporter import Exporter, ExporterSettings
from rolloutq.monitoring.queue import QueueProbe
from rolloutq.monitoring.top import TopSettings, snapshot_text, top_once

pytestmark = pytest.mark.timeout(60)
M = 30


def push(r, keys, policy, n, rollout="r1"):
    for i in range(n):
        r.xadd(keys.requests(policy), Request(rollout, i, b"o", 1000).to_fields())


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.mark.parametrize("xinfo", [None, False], ids=["auto", "scan"])
def test_lag_follows_load(mon_redis_any, xinfo):
    r, keys = mon_redis_any.client, Keys()
    r.sadd(keys.policies(), "pol")
    r.xgroup_create(keys.requests("pol"), GROUP, id="$", mkstream=True)
    probe = QueueProbe(r, keys, use_xinfo_lag=xinfo)
    expect_source = "xinfo" if xinfo is None and mon_redis_any.version.startswith("7") else "scan"

    push(r, keys, "pol", M)  # no worker: everything undelivered
    s = probe.poll().policy("pol").streams[0]
    assert (s.length, s.lag, s.pending, s.entries_added) == (M, M, 0, M)
    assert s.lag_source == expect_source
    assert s.oldest_undelivered_age_s is not None and s.oldest_pending_age_s is None

    # A worker reads 12 and acks 5 of them.
    got = r.xreadgroup(GROUP, "w1", {keys.requests("pol"): ">"}, count=12)[0][1]
    r.xack(keys.requests("pol"), GROUP, *[eid for eid, _ in got[:5]])
    time.sleep(0.05)
    s = probe.poll().policy("pol").streams[0]
    assert (s.lag, s.pending) == (M - 12, 7)
    assert s.oldest_pending_age_s >= 0.05

    # More arrive, then everything is consumed and acked: lag drains to 0.
    push(r, keys, "pol", 10, rollout="r2")
    p = probe.poll().policy("pol")
    assert p.streams[0].entries_added == M + 10 and p.arrival_rate > 0
    while True:
        got = r.xreadgroup(GROUP, "w1", {keys.requests("pol"): ">"}, count=8)
        if not got or not got[0][1]:
            break
        r.xack(keys.requests("pol"), GROUP, *[eid for eid, _ in got[0][1]])
    r.xack(keys.requests("pol"), GROUP, *[eid for eid, _ in r.xrange(keys.requests("pol"))])
    s = probe.poll().policy("pol").streams[0]
    assert (s.lag, s.pending) == (0, 0)
    assert s.oldest_undelivered_age_s is None and s.oldest_pending_age_s is None


def test_no_group_yet_counts_everything_as_lag(mon_redis_any):
    r, keys = mon_redis_any.client, Keys("ns1")
    r.sadd(keys.policies(), "p")
    push(r, keys, "p", 7)
    s = QueueProbe(r, keys).poll().policy("p").streams[0]
    assert (s.lag, s.pending, s.lag_source) == (7, 0, "no-group")


def test_shards_dead_letters_and_workers(mon_redis_any):
    r, keys = mon_redis_any.client, Keys()
    r.sadd(keys.policies(), "p")
    r.hset(keys.policy_meta("p"), "metadata", json.dumps({"shards": 2}))
    r.xadd(keys.requests("p", 1), {"v": "1"})
    r.xadd(keys.dead_letters("p", 1), {"v": "1"})
    now = time.time()
    r.hset(
        keys.worker_stats("p"),
        mapping={
            "w-up": json.dumps({"served_total": 100, "batches_total": 10, "busy_s_total": 2.0, "ts": now}),
            "w-dead": json.dumps(
                {"served_total": 5, "batches_total": 5, "busy_s_total": 1.0, "ts": now - 60}
            ),
            "w-bad": "not json",
        },
    )
    probe = QueueProbe(r, keys, stale_after_s=10)
    p = probe.poll().policy("p")
    assert [s.shard for s in p.streams] == [0, 1]
    assert p.total("lag") == 1 and p.total("dead_letters") == 1
    assert (p.replicas_up, p.replicas_stale) == (1, 1)
    assert p.service_rate_per_replica == pytest.approx(50.0)  # 100 served / 2 busy seconds
    # The next poll uses the window: 40 more served in 0.5 busy seconds -> 80/s.
    r.hset(
        keys.worker_stats("p"),
        "w-up",
        json.dumps({"served_total": 140, "batches_total": 14, "busy_s_total": 2.5, "ts": time.time()}),
    )
    push(r, keys, "p", 0)
    p = probe.poll().policy("p")
    assert p.service_rate_per_replica == pytest.approx(80.0)
    assert p.arrival_rate == 0.0 and p.utilization == 0.0


def test_exporter_serves_lag_and_top_once(mon_redis):
    r, keys = mon_redis.client, Keys("exp")
    r.sadd(keys.policies(), "pol")
    r.xgroup_create(keys.requests("pol"), GROUP, id="$", mkstream=True)
    ex = Exporter(r, ExporterSettings(namespace="exp", port=0, addr="127.0.0.1", interval_s=0.2))
    port = ex.serve()
    try:
        push(r, keys, "pol", M)
        ex.poll_once()
        m = scrape(port)
        assert m['rolloutq_queue_lag{policy="pol",shard="0"}'] == M
        assert m['rolloutq_queue_entries_added_total{policy="pol",shard="0"}'] == M
        assert m['rolloutq_policy_replicas_up{policy="pol"}'] == 0
        assert 'rolloutq_queue_oldest_pending_age_seconds{policy="pol",shard="0"}' not in m
        assert m["rolloutq_exporter_poll_errors_total"] == 0

        snap = top_once(r, TopSettings(namespace="exp", interval_s=0.1))
        p = snap.policy("pol")
        assert (p.total("lag"), p.total("pending"), p.arrival_rate) == (M, 0, 0.0)
        text = snapshot_text(snap)
        assert "pol" in text and str(M) in text

        got = r.xreadgroup(GROUP, "w", {keys.requests("pol"): ">"}, count=M)[0][1]
        r.xack(keys.requests("pol"), GROUP, *[eid for eid, _ in got])
        ex.poll_once()
        m = scrape(port)
        assert m['rolloutq_queue_lag{policy="pol",shard="0"}'] == 0
        assert m['rolloutq_queue_pending{policy="pol",shard="0"}'] == 0
    finally:
        ex.stop()


def test_exporter_survives_redis_going_away(mon_redis_any):
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    r = Redis(port=mon_redis_any.port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
    ex = Exporter(r, ExporterSettings(port=0, addr="127.0.0.1"))
    assert ex.poll_once() is not None
    mon_redis_any.stop()
    assert ex.poll_once() is None and ex.poll_errors == 1
    assert ex.snapshot is not None  # the last good snapshot is still served


def test_cli_top_once_prints_a_snapshot(mon_redis):
    from rolloutq.monitoring.cli import app
    from typer.testing import CliRunner

    r, keys = mon_redis.client, Keys("cli")
    r.sadd(keys.policies(), "clipol")
    push(r, keys, "clipol", 4)
    r.hset(keys.worker_stats("clipol"), "wcli", json.dumps(
        {"served_total": 10, "batches_total": 2, "busy_s_total": 0.5, "errors_total": {"expired": 1},
         "ts": time.time()}))
    out = CliRunner().invoke(app, ["top", "--once", "--interval", "0.1", "--namespace", "cli",
                                   "--redis-url", mon_redis.url], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "clipol" in out.output and "wcli" in out.output
    row = next(line for line in out.output.splitlines() if "clipol" in line and "wcli" not in line)
    assert "4" in row.split()  # lag 4
