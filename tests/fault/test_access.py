"""Promise 7 (access): the shipped ACL file gives each role (simulator, policy worker, controller)
exactly what it needs, and Redis refuses each role what it must not do. A whole sweep runs with
every process logged in as its own role, so the ACL is also shown to be sufficient. What the `sim`
role may still write to a sweep (results, episode specs) is checked by the controller: a simulator
cannot report for an episode it does not hold, and a forged result is rejected and counted."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
from pathlib import Path

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from rolloutq.broker.connection import connect_async
from rolloutq.broker.embedded import EmbeddedRedis, free_port
from rolloutq.broker.settings import RedisSettings
from rolloutq.broker.sweep import SweepQueue
from rolloutq.controller.intake import ResultIntake

from tests.fault.conftest import ROOT, redis_binary, wait_worker
from tests.fault.sweep import create_sweep, follow_sweep

ROLES = ("admin", "sim", "policy", "controller")


def render_acl(passwords: dict[str, str]) -> str:
    spec = importlib.util.spec_from_file_location("render_acl", ROOT / "deploy/redis/render_acl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.render(passwords)


@pytest.fixture
def acl_redis(tmp_path):
    passwords = {r: secrets.token_urlsafe(16) for r in ROLES}
    acl = tmp_path / "users.acl"
    acl.write_text(render_acl(passwords))
    assert all(p not in acl.read_text() for p in passwords.values())  # only hashes on disk
    data = tmp_path / "redis"
    data.mkdir()
    server = EmbeddedRedis(binary=redis_binary(), port=free_port(), dir=str(data),
                           extra_args=["--aclfile", str(acl)]).start()
    urls = {r: f"redis://{r}:{p}@127.0.0.1:{server.port}/0" for r, p in passwords.items()}
    try:
        yield server, urls
    finally:
        server.stop()


def denials(role: str) -> list[tuple[str, object]]:
    """(what, call(r)) pairs that `role` must be refused."""
    common = [
        ("FLUSHALL", lambda r: r.flushall()),
        ("CONFIG SET", lambda r: r.config_set("appendonly", "no")),
        ("KEYS *", lambda r: r.keys("*")),
        ("ACL LIST", lambda r: r.acl_list()),
        ("MONITOR-like CLIENT LIST", lambda r: r.client_list()),
        ("EVAL arbitrary Lua", lambda r: r.eval("return redis.call('FLUSHALL')", 0)),
        ("SHUTDOWN", lambda r: r.execute_command("SHUTDOWN", "NOSAVE")),
        ("SCRIPT FLUSH", lambda r: r.script_flush()),
        ("SAVE", lambda r: r.save()),
        ("write outside the namespace", lambda r: r.set("other:key", "x")),
    ]
    per_role = {
        "sim": [
            ("consume requests (XREADGROUP)", lambda r: r.xreadgroup("workers", "x", {"rq:req:{p#0}": ">"})),
            ("read other rollouts' observations (XRANGE requests)", lambda r: r.xrange("rq:req:{p#0}")),
            ("ack requests", lambda r: r.xack("rq:req:{p#0}", "workers", "1-0")),
            ("re-claim requests", lambda r: r.xautoclaim("rq:req:{p#0}", "workers", "x", 0)),
            ("forge a reply", lambda r: r.xadd("rq:rep:{p#0}:r0", {"seq": "0", "status": "ok"})),
            ("read the dead-letter stream", lambda r: r.xrange("rq:dlq:{p#0}")),
            ("publish policy metadata", lambda r: r.hset("rq:policy:p", "metadata", "{}")),
            ("write worker stats", lambda r: r.hset("rq:workers:p", "w", "{}")),
            ("delete a sweep", lambda r: r.delete("rq:sweep:run:todo")),
            ("change the sweep's config (HSET meta)", lambda r: r.hset("rq:sweep:run:meta", "lease_ms", "1")),
            ("read queued specs and their tokens (LRANGE todo)", lambda r: r.lrange("rq:sweep:run:todo", 0, -1)),
            ("read a queued spec (LINDEX todo)", lambda r: r.lindex("rq:sweep:run:todo", 0)),
            ("read the results (XRANGE results)", lambda r: r.xrange("rq:sweep:run:results")),
            ("stop a sweep (SET stop)", lambda r: r.set("rq:sweep:run:stop", "1")),
            ("read queued specs from a loaded script",
             lambda r: r.evalsha(r.script_load("return redis.call('LRANGE', KEYS[1], 0, -1)"), 1,
                                 "rq:sweep:run:todo")),
            ("trim the request stream", lambda r: r.xtrim("rq:req:{p#0}", 0)),
        ],
        "policy": [
            ("add requests", lambda r: r.xadd("rq:req:{p#0}", {"v": "1"})),
            ("read replies", lambda r: r.xrange("rq:rep:{p#0}:r0")),
            ("read the dead-letter stream", lambda r: r.xrange("rq:dlq:{p#0}")),
            ("touch sweeps", lambda r: r.lpop("rq:sweep:run:todo")),
            ("read sweep results", lambda r: r.xrange("rq:sweep:run:results")),
            ("delete the request stream", lambda r: r.delete("rq:req:{p#0}")),
            ("destroy the consumer group", lambda r: r.xgroup_destroy("rq:req:{p#0}", "workers")),
        ],
        "controller": [
            ("add requests", lambda r: r.xadd("rq:req:{p#0}", {"v": "1"})),
            ("consume requests", lambda r: r.xreadgroup("workers", "x", {"rq:req:{p#0}": ">"})),
            ("ack requests", lambda r: r.xack("rq:req:{p#0}", "workers", "1-0")),
            ("forge a reply", lambda r: r.xadd("rq:rep:{p#0}:r0", {"seq": "0", "status": "ok"})),
            ("read replies", lambda r: r.xrange("rq:rep:{p#0}:r0")),
            ("publish policy metadata", lambda r: r.hset("rq:policy:p", "metadata", "{}")),
            ("delete the request stream", lambda r: r.delete("rq:req:{p#0}")),
        ],
    }
    return common + per_role[role]


def check_denials(urls: dict[str, str]) -> tuple[int, int, list[str]]:
    tried = refused = 0
    allowed: list[str] = []
    admin = redis.Redis.from_url(urls["admin"])
    admin.xgroup_create("rq:req:{p#0}", "workers", id="0", mkstream=True)
    admin.xadd("rq:rep:{p#0}:r0", {"seq": "0"})
    admin.xadd("rq:dlq:{p#0}", {"x": "1"})
    for role in ("sim", "policy", "controller"):
        r = redis.Redis.from_url(urls[role])
        for what, call in denials(role):
            tried += 1
            try:
                call(r)
            except NoPermissionError:
                refused += 1
            except ResponseError as e:
                if "NOPERM" in str(e) or "no permissions" in str(e) or "user executing the script can't" in str(e):
                    refused += 1
                else:
                    allowed.append(f"{role}: {what} ({e})")
            else:
                allowed.append(f"{role}: {what}")
        r.close()
    for role, url in urls.items():  # wrong password and the default user
        tried += 1
        try:
            redis.Redis.from_url(url.replace(f"{role}:", f"{role}:x")).ping()
            allowed.append(f"{role} with a wrong password")
        except AuthenticationError:
            refused += 1
    tried += 1
    try:
        redis.Redis.from_url(urls["admin"].split("@")[0].split("//")[0] + "//" + urls["admin"].split("@")[1]).ping()
        allowed.append("default user without password")
    except (AuthenticationError, ResponseError):
        refused += 1
    admin.close()
    return tried, refused, allowed


@pytest.mark.timeout(120)
def test_each_role_refused_what_it_must_not_do_and_sweep_runs(acl_redis, spawn):
    server, urls = acl_redis
    tried, refused, allowed = check_denials(urls)
    assert allowed == [], allowed
    assert refused == tried
    print(f"ACL denials: {refused}/{tried}")
    # The same ACL is enough for a real sweep: every process logs in as its own role.
    admin = redis.Redis.from_url(urls["admin"])
    admin.flushall()
    admin.close()
    w = spawn("worker", redis_url=urls["policy"], worker_id="w0", backend={"delay_s": 0.01})
    wait_worker(urls["admin"], "w0", proc=w)
    intake = asyncio.run(create_sweep(urls["controller"], "acl", 4, lease_s=3.0, max_steps=24))
    # A simulator's account may write results straight to the stream: the controller does not take them.
    forger = redis.Redis.from_url(urls["sim"])
    forged = {"episode": 0, "seed": 1000, "attempt": 1, "outcome": "success", "reason": "", "success": True,
              "episode_return": 1.0, "steps": 1, "wall_s": 0.1, "started_at": 1.0, "policy_calls": 1,
              "round_trip_ms": [1.0], "batch_sizes": [1], "sim": "s0", "error": ""}
    forger.xadd("rq:sweep:acl:results", {"record": json.dumps(forged)})
    forger.xadd("rq:sweep:acl:results", {"record": json.dumps(forged), "token": "0" * 32})
    forger.close()
    sims = [spawn("sim", redis_url=urls["sim"], run="acl", sim_id=f"s{i}", envs=2) for i in range(2)]
    out = asyncio.run(follow_sweep(urls["controller"], "acl", 4, timeout_s=90, intake=intake))
    assert sorted(out["final"]) == [0, 1, 2, 3]
    assert out["rejected"] == {"bad_token": 2}, out["rejected"]
    assert all(rec["outcome"] in ("success", "failure") for rec in out["final"].values())
    for s in sims:
        assert s.wait(30) == 0, s.log()[-3000:]
    assert "NOPERM" not in w.log() and "no permissions" not in w.log(), w.log()[-3000:]
    # The queue exporter (rolloutq.monitoring.queue, where present) reads what it needs as `controller`.
    try:
        from rolloutq.monitoring.queue import QueueProbe
    except ImportError:
        return
    probe = QueueProbe(redis.Redis.from_url(urls["controller"]))
    snap = probe.poll()
    assert snap is not None


@pytest.mark.timeout(60)
def test_sim_role_runs_the_sweep_scripts_and_reports_only_what_it_holds(acl_redis):
    """Logged in as `sim`, the sweep's scripts run (loaded with SCRIPT LOAD, run with EVALSHA); a
    result for an episode the simulator never took is refused by the finish script; the controller's
    own scripts run as `controller`, and a finished run's keys get their TTL."""
    server, urls = acl_redis
    redis.Redis.from_url(urls["admin"]).script_flush()

    async def scenario() -> None:
        ctl, sim = connect_async(RedisSettings(url=urls["controller"])), connect_async(RedisSettings(url=urls["sim"]))
        try:
            intake = ResultIntake("acl2")
            cq, sq = SweepQueue(ctl, "acl2"), SweepQueue(sim, "acl2")
            await cq.create({"policy": "p"}, [intake.spec(i, 50 + i) for i in range(3)], lease_s=30)
            assert await sq.config() == {"policy": "p"} and await sq.lease_ms() == 30_000
            a = await sq.take("simA", 30_000)
            b = await sq.take("simA", 30_000)
            assert (a.episode, b.episode) == (0, 1) and a.token and b.token
            assert await sq.renew("simA", [0, 1], 30_000) == 2
            assert await sq.counts() == {"todo": 1, "running": 2}
            record = {"episode": 2, "seed": 52, "attempt": 1, "outcome": "success", "reason": "", "success": True,
                      "episode_return": 1.0, "steps": 3, "wall_s": 0.1, "started_at": 1.0, "policy_calls": 1,
                      "round_trip_ms": [1.0], "batch_sizes": [1], "sim": "simA", "error": ""}
            assert await sq.finish(2, a.token, record) is False  # episode 2 was never taken by anyone
            assert await sq.finish(0, a.token, {**record, "episode": 0, "seed": 50}) is True
            assert await sq.release("simA", [1], {1: b.token}) == 1
            assert not await sq.stopped()
            got = await cq.read_results(b"0-0", block_ms=100)
            assert [intake.accept(e)["episode"] for e in got] == [0]
            assert await cq.rejected_finishes() == 1
            c = await sq.take("simB", 1)
            await asyncio.sleep(0.05)
            assert await cq.expire_leases(intake.hand_back) == 1
            assert (await sq.take("simC", 30_000)).token == c.token
            await cq.expire(3600)
            assert await sq.stopped()
        finally:
            await ctl.aclose()
            await sim.aclose()

    asyncio.run(scenario())
    admin = redis.Redis.from_url(urls["admin"])
    assert all(0 < admin.ttl(f"rq:sweep:acl2:{k}") <= 3600 for k in ("meta", "todo", "results", "rejected", "stop"))
    stats = admin.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] > 0 and stats["cmdstat_script|load"]["calls"] > 0
    assert "cmdstat_eval" not in stats  # the scripts never go as EVAL (refused to `sim`)


def test_no_pickle_on_any_wire():
    """No module of ours imports pickle (or a pickle wrapper) or msgpack-numpy's unpickling decoder."""
    offenders = []
    for pkg in ("broker", "policy_workers", "sim_workers", "controller", "monitoring"):
        for path in Path(ROOT, pkg).rglob("*.py"):
            text = path.read_text()
            for needle in ("import pickle", "from pickle", "cloudpickle", "import dill", "msgpack_numpy.decode",
                           "m.decode(", "pickle.loads", "allow_pickle=True"):
                if needle in text:
                    offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert offenders == []
