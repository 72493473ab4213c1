"""Protocol v2's guarantees against a real redis-server: no reply can be forged or misdirected,
resends are inferred once, a client that gives up abandons its request, bad fields are refused
before they cost memory, non-finite values never cross the wire unnoticed."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from rolloutq.broker.client import PolicyClient, SyncPolicyClient
from rolloutq.broker.codec import encode
from rolloutq.broker.connection import connect_async, connect_sync
from rolloutq.broker.errors import PolicyErrorReply, PolicyTimeout, ProtocolError
from rolloutq.broker.keys import GROUP, Keys
from rolloutq.broker.schema import Reply, Request, Status
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings

from tests.broker.test_client_consumer import EchoHandler, serving

KEYS = Keys()


def _obs(x: float) -> dict:
    return {"x": np.array([[x, 0]], np.float32)}


def _forge(r, victim: str, seq: int) -> dict:
    """What an attacker that knows a victim's rollout id and next seq sends: its own observation,
    under the victim's rollout id, with a v1-style `reply_to` naming the victim's reply stream."""
    fields = Request(victim, seq, encode(_obs(999.0)), ttl_ms=10_000).to_fields()
    fields["reply_to"] = KEYS.replies("p", victim, 0)
    return fields


def test_a_forged_request_under_a_victims_rollout_id_never_answers_the_victim(redis_url):
    """The victim's next call sees the attacker's reply first on its own reply stream (that is the
    attack), and must skip it: its answer is always the one to its own observation."""
    async def main():
        handler = EchoHandler()
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=4, max_wait_ms=1)):
            r = connect_async(RedisSettings(url=redis_url))
            victim = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
            accepted = 0
            for step in range(20):
                if step:  # the attacker answers first: its reply lands before the victim asks
                    await r.xadd(KEYS.requests("p", 0), _forge(r, "victim", step))
                    for _ in range(200):
                        if await r.xlen(KEYS.replies("p", "victim", 0)) >= 2 * step:
                            break
                        await asyncio.sleep(0.01)
                res = await victim.act("victim", _obs(float(step)))
                accepted += res.chunk["echo"][0, 0] == 999.0
                assert res.chunk["echo"].tolist() == [[step, 0]]
            print(f"FIGURE forgery: 19 attempts, {accepted} accepted by the victim")
            assert accepted == 0
            forged = [f for _, f in await r.xrange(KEYS.replies("p", "victim", 0)) if f[b"status"] == b"ok"]
            assert len(forged) == 2 * 20 - 1  # the attacker's requests were answered, to nobody's use
            await r.aclose()

    asyncio.run(main())


def test_the_sync_client_skips_a_reply_to_someone_elses_request(redis_url):
    async def main():
        handler = EchoHandler()
        async with serving(redis_url, handler):
            sync_r = connect_sync(RedisSettings(url=redis_url))
            victim = SyncPolicyClient(sync_r, "p", settings=ClientSettings(deadline_s=10))
            assert (await asyncio.to_thread(victim.act, "sv", _obs(0.0))).chunk["echo"][0, 0] == 0
            r = connect_async(RedisSettings(url=redis_url))
            await r.xadd(KEYS.requests("p", 0), _forge(r, "sv", 1))
            while await r.xlen(KEYS.replies("p", "sv", 0)) < 2:
                await asyncio.sleep(0.01)
            res = await asyncio.to_thread(victim.act, "sv", _obs(1.0))
            assert res.chunk["echo"].tolist() == [[1, 0]]
            await r.aclose()
            sync_r.close()

    asyncio.run(main())


@pytest.mark.parametrize("rollout", ["a\nb", "x*", "{p#0}", "r" * 10_000, "", "tab\tbed", "ünï"])
def test_rollout_ids_outside_the_charset_are_refused_by_client_and_worker(redis_url, rollout):
    async def main():
        handler = EchoHandler()
        async with serving(redis_url, handler) as consumer:
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=5))
            with pytest.raises(ProtocolError, match="not a valid name"):
                await client.act(rollout, _obs(1.0))
            fields = Request("ok", 0, encode(_obs(1.0)), ttl_ms=10_000).to_fields()
            fields["rollout"] = rollout
            await r.xadd(KEYS.requests("p", 0), fields)
            for _ in range(300):
                if await r.xlen(KEYS.dead_letters("p", 0)):
                    break
                await asyncio.sleep(0.01)
            dead = await r.xrange(KEYS.dead_letters("p", 0))
            assert len(dead) == 1 and dead[0][1][b"reason"] == b"bad_request"
            assert [k async for k in r.scan_iter(match="rq:rep:*")] == []  # no key was made from it
            assert (await client.act("after", _obs(2.0))).chunk["echo"][0, 0] == 2  # still serving
            assert handler.batches == [1] and consumer.stats.requests_total == 2
            await r.aclose()

    asyncio.run(main())


def test_every_field_is_capped_and_refusals_echo_what_can_be_read(redis_url):
    async def main():
        async with serving(redis_url, EchoHandler()):
            r = connect_async(RedisSettings(url=redis_url))
            good = Request("capped", 0, encode(_obs(1.0)), ttl_ms=10_000, nonce="n0nce-1234").to_fields()
            cases = {
                "seq": ({**good, "seq": "9" * 21}, "'seq' is 21 bytes long"),
                "ttl": ({**good, "ttl_ms": "0"}, "'ttl_ms' must be > 0"),
                "nonce": ({**good, "nonce": "n" * 65}, "'nonce'"),
                "fields": ({**good, **{f"junk{i}": "x" for i in range(20)}}, "at most 16 are allowed"),
                "no-seq": ({k: v for k, v in good.items() if k != "seq"}, "no 'seq' field"),
            }
            for name, (fields, message) in cases.items():
                before = await r.xlen(KEYS.replies("p", "capped", 0))
                await r.xadd(KEYS.requests("p", 0), fields)
                while await r.xlen(KEYS.replies("p", "capped", 0)) == before:
                    await asyncio.sleep(0.01)
                reply = Reply.from_fields((await r.xrevrange(KEYS.replies("p", "capped", 0), count=1))[0][1])
                assert reply.status == Status.BAD_REQUEST and message in reply.error, name
                if name == "no-seq":  # the nonce still lets a client match it
                    assert reply.seq == -1 and reply.nonce == "n0nce-1234"
            await r.aclose()

    asyncio.run(main())


def test_a_resend_is_not_inferred_while_its_original_is_held_or_answered(redis_url):
    """A slow policy and an impatient client: the client resends 3 times, the policy runs once."""
    async def main():
        handler = EchoHandler(delay_s=1.2)
        async with serving(redis_url, handler) as consumer:
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10, reply_timeout_s=0.3,
                                                                  max_resends=5))
            res = await client.act("slow", _obs(7.0))
            assert res.chunk["echo"][0, 0] == 7 and res.sends >= 3
            await asyncio.sleep(0.5)  # resends still queued behind the first are read and dropped
            assert handler.batches == [1]
            assert consumer.stats.duplicates_total == res.sends - 1
            stream = KEYS.requests("p", 0)
            assert await r.xlen(stream) == 0 and (await r.xpending(stream, GROUP))["pending"] == 0
            await r.aclose()

    asyncio.run(main())


def test_a_resend_after_the_reply_was_written_is_dropped(redis_url):
    async def main():
        handler = EchoHandler()
        async with serving(redis_url, handler) as consumer:
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
            await client.act("late-resend", _obs(1.0))
            first = (await r.xrange(KEYS.replies("p", "late-resend", 0)))[0][1]
            resend = Request("late-resend", 0, encode(_obs(1.0)), ttl_ms=10_000,
                             nonce=first[b"nonce"].decode(), resend=1, orig="1-0").to_fields()
            await r.xadd(KEYS.requests("p", 0), resend)
            for _ in range(300):
                if consumer.stats.duplicates_total:
                    break
                await asyncio.sleep(0.01)
            assert consumer.stats.duplicates_total == 1 and handler.batches == [1]
            assert await r.xlen(KEYS.replies("p", "late-resend", 0)) == 1
            await r.aclose()

    asyncio.run(main())


def test_a_client_that_gives_up_abandons_its_request(redis_url):
    """The worker is busy past the client's deadline: the abandoned request is never inferred."""
    async def main():
        handler = EchoHandler(delay_s=1.5)
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=1, max_wait_ms=1)):
            r = connect_async(RedisSettings(url=redis_url))
            patient = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
            hasty = PolicyClient(r, "p", settings=ClientSettings(deadline_s=0.6, reply_timeout_s=0.2,
                                                                 max_resends=10))
            busy = asyncio.create_task(patient.act("busy", _obs(1.0)))
            await asyncio.sleep(0.2)
            with pytest.raises(PolicyTimeout):
                await hasty.act("hasty", _obs(2.0))
            await busy
            await asyncio.sleep(2.0)  # long enough for anything still queued to be read and run
            assert handler.batches == [1]  # the busy rollout's; nothing of the hasty one
            assert await r.xlen(KEYS.requests("p", 0)) == 0
            await r.aclose()

    asyncio.run(main())


def test_non_finite_observations_and_actions_are_refused(redis_url):
    class NanPolicy(EchoHandler):
        def infer(self, batch):
            out = super().infer(batch)
            for o in out:
                o["echo"][:] = np.nan
            return out

    async def main():
        async with serving(redis_url, EchoHandler()):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=5))
            with pytest.raises(PolicyErrorReply) as e:
                await client.act("nan-obs", {"x": np.array([[np.nan, 1]], np.float32)})
            assert e.value.code == Status.BAD_OBSERVATION and "'x'" in e.value.detail
            await r.aclose()
        for worker_checks in (True, False):  # the client checks too, whatever the worker does
            async with serving(redis_url, NanPolicy(), check_finite=worker_checks):
                r = connect_async(RedisSettings(url=redis_url))
                client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=5))
                with pytest.raises(PolicyErrorReply) as e:
                    await client.act(f"nan-act-{worker_checks}", _obs(1.0))
                assert e.value.code == Status.BAD_ACTION and "'echo'" in e.value.detail
                await r.aclose()

    asyncio.run(main())


def test_the_dead_letter_stream_is_capped(redis_url):
    async def main():
        async with serving(redis_url, EchoHandler(), dlq_maxlen=100) as consumer:
            r = connect_async(RedisSettings(url=redis_url))
            pipe = r.pipeline(transaction=False)
            for i in range(1000):
                pipe.xadd(KEYS.requests("p", 0), {"v": "2", "rollout": f"bad{i}"})  # no seq, nonce, obs
            await pipe.execute()
            for _ in range(1000):
                if consumer.stats.dead_letters_total >= 1000:
                    break
                await asyncio.sleep(0.02)
            assert consumer.stats.dead_letters_total == 1000
            assert 100 <= await r.xlen(KEYS.dead_letters("p", 0)) < 300  # MAXLEN ~ trims whole macro nodes
            await r.aclose()

    asyncio.run(main())


def test_replies_are_rebuilt_and_written_when_the_first_write_fails(redis_url, monkeypatch):
    """redis-py empties a pipeline whose execution failed: a retry must build it again, or its
    replies and acks are silently lost."""
    import redis.asyncio.client as aclient

    real = aclient.Pipeline.execute
    failed = threading.Event()

    async def flaky(self, *args, **kwargs):
        if not failed.is_set() and any(c[0][0] == "XACK" for c in self.command_stack):
            failed.set()
            self.command_stack.clear()  # what a failed execution leaves behind
            raise RedisConnectionError("connection reset (test)")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(aclient.Pipeline, "execute", flaky)

    async def main():
        async with serving(redis_url, EchoHandler()):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10, reply_timeout_s=5))
            t0 = time.perf_counter()
            res = await client.act("flaky", _obs(3.0))
            assert failed.is_set() and res.chunk["echo"][0, 0] == 3 and res.sends == 1
            assert time.perf_counter() - t0 < 5  # answered by the retry, not after a resend
            assert (await r.xpending(KEYS.requests("p", 0), GROUP))["pending"] == 0
            await r.aclose()

    asyncio.run(main())


def test_a_read_whose_answer_was_lost_is_taken_up_by_the_same_worker(redis_url):
    """Entries delivered to a worker by a read it never saw the answer of (a socket timeout after
    SIGSTOP) are answered by that worker, not left pending until a client resends."""
    async def main():
        handler = EchoHandler()
        async with serving(redis_url, handler, claim_every_s=0.2, claim_idle_ms=60_000) as consumer:
            r = connect_async(RedisSettings(url=redis_url))
            request = Request("lost", 0, encode(_obs(5.0)), ttl_ms=30_000)
            consumer.quarantine = True  # pause the worker's own reads for a moment
            await asyncio.sleep(0.1)
            await r.xadd(KEYS.requests("p", 0), request.to_fields())
            # the read the worker never saw the answer of: delivered to its consumer name
            await r.xreadgroup(GROUP, consumer.worker_id, {KEYS.requests("p", 0): ">"}, count=10)
            consumer.quarantine = False
            for _ in range(300):
                if await r.xlen(KEYS.replies("p", "lost", 0)):
                    break
                await asyncio.sleep(0.01)
            reply = Reply.from_fields((await r.xrange(KEYS.replies("p", "lost", 0)))[0][1])
            assert reply.ok and reply.nonce == request.nonce and consumer.stats.recovered_total == 1
            assert (await r.xpending(KEYS.requests("p", 0), GROUP))["pending"] == 0
            await r.aclose()

    asyncio.run(main())


def test_a_retry_storm_infers_every_request_once(redis_url):
    """32 rollouts against a policy slower than their reply timeout, so every request is resent
    several times: each (rollout, step) still reaches the model exactly once."""
    class Tally(EchoHandler):
        def __init__(self) -> None:
            super().__init__(delay_s=0.4)
            self.seen: list[tuple[float, float]] = []

        def infer(self, batch):
            self.seen.extend((float(o["x"][0, 0]), float(o["x"][0, 1])) for o in batch)
            return super().infer(batch)

    async def main():
        handler = Tally()
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=8, max_wait_ms=2)) as consumer:
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=60, reply_timeout_s=0.25,
                                                                  max_resends=100))

            async def rollout(i: int) -> int:
                sends = 0
                for step in range(3):
                    res = await client.act(f"storm{i}", {"x": np.array([[i, step]], np.float32)})
                    assert res.chunk["echo"].tolist() == [[i, step]]
                    sends += res.sends
                return sends

            sends = sum(await asyncio.gather(*[rollout(i) for i in range(32)]))
            await asyncio.sleep(1.0)  # resends still queued are read and dropped
            inferred_twice = len(handler.seen) - len(set(handler.seen))
            print(f"FIGURE retry storm: {sends} sends for 96 requests, {consumer.stats.duplicates_total} dropped, "
                  f"{inferred_twice} inferred twice")
            assert sends > 2 * 96 and inferred_twice == 0 and len(handler.seen) == 96
            await r.aclose()

    asyncio.run(main())


def test_a_client_refuses_a_policy_that_speaks_another_protocol(redis_url):
    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        await r.hset(KEYS.policy_meta("old"), mapping={"metadata": "{}", "protocol": "1"})
        client = PolicyClient(r, "old")
        with pytest.raises(ProtocolError, match="speak protocol 1, this client speaks 2"):
            await client.metadata()
        await r.hset(KEYS.policy_meta("both"), mapping={"metadata": "{}", "protocol": "1,2"})
        assert await PolicyClient(r, "both").metadata() == {}
        await r.aclose()

    asyncio.run(main())


def test_a_request_tells_the_worker_which_rollouts_of_its_client_ended(redis_url):
    async def main():
        async with serving(redis_url, EchoHandler()) as consumer:
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
            await client.act("ep0", _obs(1.0))
            assert "ep0" in consumer.batcher.thinks.tracks
            client.forget("ep0")
            sent = []
            original = consumer.admission.admit

            def spy(stream, entry_id, fields, deliveries, server_ms):
                sent.append(fields.get(b"ended"))
                return original(stream, entry_id, fields, deliveries, server_ms)

            consumer.admission.admit = spy
            await client.act("ep1", _obs(2.0))
            await client.act("ep1", _obs(3.0))
            assert sent == [b"ep0", None]  # told once, with the next request
            assert "ep0" not in consumer.batcher.thinks.tracks and "ep1" in consumer.batcher.thinks.tracks
            await r.aclose()

    asyncio.run(main())
