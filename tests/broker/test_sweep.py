"""The sweep queue's scripts against a real redis-server: lease tokens from spec to result, finish
refused without the lease's token, expiry and release keeping tokens, and a script cache that
empties under them."""

from __future__ import annotations

import asyncio
import hashlib
import json

from rolloutq.broker.connection import connect_async
from rolloutq.broker.settings import RedisSettings
from rolloutq.broker.sweep import EpisodeSpec, SweepQueue
from rolloutq.controller.intake import ResultIntake


def _run(redis_url: str, scenario) -> object:
    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        try:
            return await scenario(r)
        finally:
            await r.aclose()

    return asyncio.run(main())


def test_token_goes_from_spec_to_result_and_the_lease_holds_only_its_hash(redis_url):
    async def scenario(r):
        intake = ResultIntake("tok")
        q = SweepQueue(r, "tok")
        await q.create({"policy": "p"}, [intake.spec(0, 7)], lease_s=30)
        spec = await q.take("simA", 30_000)
        assert spec is not None and len(spec.token) == 32
        lease = json.loads(await r.hget(q.k_leases, "0"))
        assert lease["token_sha"] == hashlib.sha1(spec.token.encode()).hexdigest()
        assert spec.token not in json.dumps(lease)  # a simulator reading the leases learns no token
        assert await q.finish(0, spec.token, {"episode": 0}, b"gif") is True
        [entry] = await q.read_results(b"0-0", block_ms=100)
        assert (entry.record, entry.video, entry.token) == ({"episode": 0}, b"gif", spec.token)
        assert (await q.counts()) == {"todo": 0, "running": 0}
        assert await q.rejected_finishes() == 0

    _run(redis_url, scenario)


def test_finish_refused_without_the_lease_or_with_another_token(redis_url):
    async def scenario(r):
        intake = ResultIntake("fin")
        q = SweepQueue(r, "fin")
        await q.create({"policy": "p"}, [intake.spec(0, 7), intake.spec(1, 8)], lease_s=30)
        spec = await q.take("simA", 30_000)
        # episode 1 was never taken: no lease, nothing written, whatever the token
        assert await q.finish(1, spec.token, {"episode": 1}) is False
        assert await q.finish(0, "0" * 32, {"episode": 0}) is False  # a guessed token
        assert await q.finish(0, "", {"episode": 0}) is False
        assert await r.xlen(q.k_results) == 0
        assert await q.rejected_finishes() == 3
        assert (await q.counts()) == {"todo": 1, "running": 1}  # the lease is still there for its holder
        assert await q.finish(0, spec.token, {"episode": 0}) is True
        assert await q.finish(0, spec.token, {"episode": 0}) is False  # the lease is gone: no second result
        assert await r.xlen(q.k_results) == 1

    _run(redis_url, scenario)


def test_expired_lease_goes_back_with_a_fresh_spec_from_the_controller(redis_url):
    async def scenario(r):
        intake = ResultIntake("exp")
        q = SweepQueue(r, "exp")
        first = intake.spec(0, 7)
        await q.create({"policy": "p"}, [first], lease_s=30)
        taken = await q.take("dead-sim", 1)
        await asyncio.sleep(0.05)
        assert await q.expire_leases(intake.hand_back) == 1
        again = await q.take("simB", 30_000)
        assert (again.episode, again.seed, again.attempt, again.gen, again.token) == (0, 7, 1, 1, taken.token)
        assert await q.finish(0, again.token, {"episode": 0}) is True

    _run(redis_url, scenario)


def test_expired_lease_of_an_episode_the_controller_no_longer_waits_for_is_dropped(redis_url):
    """A lease no spec of the controller's stands behind (e.g. written by a simulator) is removed, not re-queued."""

    async def scenario(r):
        intake = ResultIntake("drop")
        q = SweepQueue(r, "drop")
        await q.create({"policy": "p"}, [], lease_s=30)
        await r.hset(q.k_leases, "5", json.dumps({"sim": "x", "expires": 0, "spec": '{"episode": 5, "seed": 1}'}))
        await r.hset(q.k_leases, "6", "not json")
        assert await q.expire_leases(intake.hand_back) == 0
        assert (await q.counts()) == {"todo": 0, "running": 0}

    _run(redis_url, scenario)


def test_release_keeps_the_token_and_needs_it(redis_url):
    async def scenario(r):
        intake = ResultIntake("rel")
        q = SweepQueue(r, "rel")
        await q.create({"policy": "p"}, [intake.spec(0, 7)], lease_s=30)
        spec = await q.take("simA", 30_000)
        assert await q.release("simA", [0], {0: "f" * 32}) == 0  # not the token it was taken with
        assert await q.release("simA", [0], {0: spec.token}) == 1
        again = await q.take("simB", 30_000)
        assert (again.gen, again.token) == (1, spec.token)
        assert await q.finish(0, again.token, {"episode": 0}) is True

    _run(redis_url, scenario)


def test_garbage_on_the_list_is_skipped_by_take(redis_url):
    async def scenario(r):
        q = SweepQueue(r, "junk")
        await q.create({"policy": "p"}, [EpisodeSpec(3, 9)], lease_s=30)
        await r.lpush(q.k_todo, "not json", '{"episode": "x", "seed": 1}', "[1, 2]")
        spec = await q.take("simA", 30_000)
        assert (spec.episode, spec.seed, spec.token) == (3, 9, "")
        assert await q.take("simA", 30_000) is None

    _run(redis_url, scenario)


def test_read_results_returns_what_does_not_parse_instead_of_raising(redis_url):
    async def scenario(r):
        q = SweepQueue(r, "raw")
        await r.xadd(q.k_results, {"record": b"{not json"})
        await r.xadd(q.k_results, {"other": b"1"})
        got = await q.read_results(b"0-0", block_ms=100)
        assert [(e.record, e.token) for e in got] == [(b"{not json", ""), (None, "")]

    _run(redis_url, scenario)


def test_expire_sets_a_ttl_on_every_key_and_zero_deletes_at_once(redis_url):
    async def scenario(r):
        intake = ResultIntake("ttl")
        q = SweepQueue(r, "ttl")
        await q.create({"policy": "p"}, [intake.spec(0, 7), intake.spec(1, 8)], lease_s=30)
        spec = await q.take("simA", 30_000)
        await q.finish(spec.episode, spec.token, {"episode": 0})
        await q.take("simA", 30_000)
        await q.finish(0, "bad", {})
        keys = [q.k_meta, q.k_leases, q.k_results, q.k_rejected]
        assert [await r.ttl(k) for k in keys] == [-1] * 4  # no expiry while the run goes on
        await q.expire(600)
        ttls = [await r.ttl(k) for k in [*keys, q.k_stop]]
        assert all(0 < t <= 600 for t in ttls), ttls
        await q.expire(0)
        assert await r.exists(*keys) == 0
        assert await q.stopped()  # simulators still polling are told to leave

    _run(redis_url, scenario)


def test_scripts_survive_a_cache_emptied_again_after_redis_py_reloads_them(redis_url):
    """A Redis restart empties the script cache; redis-py reloads a script and retries once. If the
    server restarts again between that reload and that retry (SCRIPT FLUSH stands in for the
    restart here), the queue loads and retries once more instead of failing the simulator."""

    async def scenario(r):
        q = SweepQueue(r, "flush")
        await q.create({"policy": "p"}, [EpisodeSpec(i, 10 + i) for i in range(2)], lease_s=30)
        load, flushed = r.script_load, []

        async def load_then_flush(script):
            sha = await load(script)
            if len(flushed) < 2:  # the first two reloads are lost, as across two restarts
                flushed.append(sha)
                await r.script_flush()
            return sha

        r.script_load = load_then_flush
        await r.script_flush()
        spec = await q.take("sim", 30_000)
        assert spec is not None and spec.episode == 0 and len(flushed) == 2
        await r.script_flush()
        assert await q.finish(spec.episode, spec.token, {"outcome": "success"})
        assert (await q.counts()) == {"todo": 1, "running": 0}

    _run(redis_url, scenario)
