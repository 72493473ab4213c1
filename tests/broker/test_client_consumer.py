"""Client and consumer over a real redis-server: ordering, isolation, late workers, errors, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

import numpy as np
import pytest
from rolloutq.broker.batch_runner import REPLY_GROUP
from rolloutq.broker.client import ActionChunker, PolicyClient, SyncPolicyClient
from rolloutq.broker.codec import encode
from rolloutq.broker.connection import connect_async, connect_sync
from rolloutq.broker.consumer import StreamConsumer
from rolloutq.broker.errors import PolicyErrorReply, PolicyTimeout
from rolloutq.broker.handler import BatchHandler
from rolloutq.broker.keys import GROUP, Keys, shard_of
from rolloutq.broker.schema import Reply, Request, Status
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
from rolloutq.policy_workers.batching import SchemaChecker
from rolloutq.policy_workers.batching import split as split_rows


class EchoHandler(BatchHandler):
    """Replies with the observation's rollout index and step so each reply can be traced back."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[int] = []

    def validate(self, obs):
        if "x" not in obs:
            return "observation needs key 'x'"
        return None

    def infer(self, batch):
        self.batches.append(len(batch))
        if self.delay_s:
            time.sleep(self.delay_s)
        return [{"echo": np.asarray(o["x"], np.float32).copy()} for o in batch]


@contextlib.asynccontextmanager
async def serving(url: str, handler, **worker_kwargs):
    settings = WorkerSettings(policy="p", block_ms=20, **worker_kwargs)
    r = connect_async(RedisSettings(url=url))
    consumer = StreamConsumer(r, handler, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(consumer.ready.wait(), 10)
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await r.aclose()


def impatient_client(r) -> PolicyClient:
    """A client of a policy nobody serves: resends every 0.25 s, gives up after 0.6 s."""
    return PolicyClient(r, "nobody", settings=ClientSettings(deadline_s=0.6, reply_timeout_s=0.25, max_resends=5))


def test_32_concurrent_rollouts_each_get_their_own_replies_in_sequence(redis_url):
    async def main():
        handler = EchoHandler(delay_s=0.002)
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=16, max_wait_ms=2)):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20))

            async def rollout(i: int) -> None:
                for step in range(10):
                    res = await client.act(f"r{i}", {"x": np.array([[i, step]], np.float32)})
                    assert res.seq == step
                    assert res.chunk["echo"].tolist() == [[i, step]]

            await asyncio.gather(*[rollout(i) for i in range(32)])
            await r.aclose()
        assert sum(handler.batches) == 320
        assert max(handler.batches) > 1  # requests of different rollouts shared forward passes

    asyncio.run(main())


def test_act_many_serves_many_rollouts_in_one_call_each_with_its_own_replies(redis_url):
    async def main():
        handler = EchoHandler()
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=32, max_wait_ms=2)):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20))
            for step in range(6):
                items = [(f"v{i}", {"x": np.array([[i, step]], np.float32)}) for i in range(24)]
                if step == 3:  # one bad observation: its rollout gets the error, the others their chunks
                    items[5] = ("v5", {"y": np.zeros(1)})
                results = await client.act_many(items)
                for i, res in enumerate(results):
                    if step == 3 and i == 5:
                        assert isinstance(res, PolicyErrorReply) and res.code == Status.SCHEMA_MISMATCH
                        continue
                    assert not isinstance(res, Exception), res
                    assert res.seq == step and res.chunk["echo"].tolist() == [[i, step]]
            with pytest.raises(ValueError, match="at most once"):
                await client.act_many([("v0", {"x": np.zeros((1, 1), np.float32)})] * 2)
            await r.aclose()
        assert sum(handler.batches) == 6 * 24 - 1
        assert max(handler.batches) > 1

    asyncio.run(main())


def test_a_large_batch_is_answered_in_several_pipelines_and_fully_acked(redis_url):
    """A batch's replies go out `REPLY_GROUP` at a time: every rollout still gets its own, and every
    request is acked and deleted."""
    group = REPLY_GROUP
    n = 2 * group + 5

    async def main():
        handler = EchoHandler()
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=64, max_wait_ms=500)) as consumer:
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20))
            writes = []
            original = consumer.writer.write

            async def counting(answers):
                writes.append(len(answers))
                await original(answers)

            consumer.writer.write = counting
            items = [(f"g{i}", {"x": np.array([[i, 0]], np.float32)}) for i in range(n)]
            await client.act_many(items)  # makes the n rollouts the worker's cohort
            writes.clear()
            handler.batches.clear()
            results = await client.act_many(items)
            assert [res.chunk["echo"].tolist() for res in results] == [[[i, 0]] for i in range(n)]
            assert handler.batches == [n] and sorted(writes) == sorted([group] * 2 + [5])
            stream = Keys().requests("p", 0)
            assert (await r.xpending(stream, GROUP))["pending"] == 0 and await r.xlen(stream) == 0
            await r.aclose()

    asyncio.run(main())


def test_act_many_times_out_per_rollout_and_resends_with_the_same_sequence(redis_url):
    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        client = impatient_client(r)
        results = await client.act_many([(f"t{i}", {"x": np.zeros((1, 1), np.float32)}) for i in range(3)])
        assert all(isinstance(x, PolicyTimeout) for x in results)
        assert all("sends" in str(x) and "(1 sends)" not in str(x) for x in results)  # every rollout was resent
        assert await r.xlen(Keys().requests("nobody")) == 0  # and, giving up, deleted what it had sent
        await r.aclose()

    asyncio.run(main())


def test_worker_started_after_requests_were_queued_still_serves_them(redis_url):
    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20))
        pending = [asyncio.create_task(client.act(f"r{i}", {"x": np.array([[i]], np.float32)})) for i in range(5)]
        await asyncio.sleep(0.5)
        assert await r.xlen(Keys().requests("p")) == 5
        assert not any(t.done() for t in pending)
        async with serving(redis_url, EchoHandler()):
            results = await asyncio.wait_for(asyncio.gather(*pending), 15)
        assert [res.chunk["echo"][0, 0] for res in results] == [0, 1, 2, 3, 4]
        assert (await r.xpending(Keys().requests("p"), GROUP))["pending"] == 0
        await r.aclose()

    asyncio.run(main())


def test_bad_observation_gets_error_reply_and_worker_keeps_serving(redis_url):
    async def main():
        async with serving(redis_url, EchoHandler()):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
            with pytest.raises(PolicyErrorReply) as err:
                await client.act("bad", {"y": np.zeros(1)})
            assert err.value.code == Status.SCHEMA_MISMATCH and "needs key 'x'" in err.value.detail
            with pytest.raises(PolicyErrorReply) as err2:
                await client.act("bad2", b"\x92\x01")  # raw bytes that are not a valid observation map
            assert err2.value.code == Status.SCHEMA_MISMATCH or err2.value.code == Status.BAD_OBSERVATION
            with pytest.raises(PolicyErrorReply) as err3:
                await client.act("bad3", b"\xc1")
            assert err3.value.code == Status.BAD_OBSERVATION and "Traceback" not in err3.value.detail
            res = await client.act("good", {"x": np.ones((1, 1), np.float32)})
            assert res.chunk["echo"].shape == (1, 1)
            await r.aclose()

    asyncio.run(main())


class RowsHandler(BatchHandler):
    """A policy taking several rows per request (schema leading dimension -1): stacks the batch's
    rows, answers each row with its own `x` doubled, split back by request."""

    def __init__(self) -> None:
        self.check = SchemaChecker({"x": {"dtype": "float32", "shape": [-1, 2]}, "task": {"kind": "text"}})
        self.batches: list[tuple[int, int]] = []  # (requests, rows)

    def validate(self, obs):
        return self.check(obs)

    def rows(self, obs):
        return self.check.rows(obs)

    def infer(self, batch):
        sizes = [o["x"].shape[0] for o in batch]
        self.batches.append((len(batch), sum(sizes)))
        stacked = np.concatenate([o["x"] for o in batch]) * 2
        return split_rows({"twice": stacked}, sizes)


def test_a_vectorized_simulator_sends_several_rows_in_one_request(redis_url):
    async def main():
        handler = RowsHandler()
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=5, max_wait_ms=300)):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))

            def obs(first: int, n: int) -> dict:
                return {"x": np.arange(first, first + 2 * n, dtype=np.float32).reshape(n, 2),
                        "task": [["pick"]] * n}

            # 3 rows + 1 + 1 fill a batch of 5 rows: one forward pass, each reply its own rows (the first
            # round makes the three rollouts the worker's cohort: the second waits for all of them)
            await asyncio.gather(client.act("vec", obs(0, 3)), client.act("a", obs(100, 1)), client.act("b", obs(0, 1)))
            handler.batches.clear()
            three, one_a, one_b = await asyncio.gather(client.act("vec", obs(0, 3)), client.act("a", obs(100, 1)),
                                                       client.act("b", obs(200, 1)))
            assert three.chunk["twice"].tolist() == (obs(0, 3)["x"] * 2).tolist()
            assert one_a.chunk["twice"].tolist() == [[200.0, 202.0]] and one_b.chunk["twice"].shape == (1, 2)
            assert handler.batches == [(3, 5)] and three.batch == one_a.batch == 5
            # 4 + 4 rows do not fit 5: two batches, neither request split
            await asyncio.gather(client.act("vec", obs(0, 4)), client.act("vec2", obs(0, 4)))
            assert handler.batches[1:] == [(1, 4), (1, 4)]
            with pytest.raises(PolicyErrorReply) as err:
                await client.act("big", obs(0, 6))
            assert err.value.code == Status.SCHEMA_MISMATCH and "at most 5 rows" in err.value.detail
            bad = obs(0, 2) | {"task": [["pick"]]}
            with pytest.raises(PolicyErrorReply) as err2:
                await client.act("short-text", bad)
            assert err2.value.code == Status.SCHEMA_MISMATCH and "list of 2 text rows" in err2.value.detail
            res = await client.act("after", obs(7, 2))  # the worker kept serving
            assert res.chunk["twice"].shape == (2, 2)
            await r.aclose()

    asyncio.run(main())


class SumHandler(EchoHandler):
    """Replies with a small digest of a large `x` (so replies stay small) and the value of its first cell."""

    def infer(self, batch):
        self.batches.append(len(batch))
        time.sleep(self.delay_s)
        return [{"sum": np.float64(o["x"].sum()), "first": np.asarray(o["x"]).reshape(-1)[:1].copy(),
                 "shape": np.asarray(o["x"].shape)} for o in batch]


def test_shared_frames_carry_large_arrays_past_redis_and_batch_like_inline_ones(redis_url, tmp_path):
    frames_dir = str(tmp_path)  # stands in for /dev/shm, shared by the client and the worker

    async def main():
        handler = SumHandler(delay_s=0.01)
        async with serving(redis_url, handler, frames_dir=frames_dir,
                           batch=BatchSettings(max_batch_size=8, max_wait_ms=20)):
            r = connect_async(RedisSettings(url=redis_url))
            shared = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20, shared_frames=True,
                                                                  frames_dir=frames_dir))
            inline = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20))
            seen: dict[int, list[int]] = {i: [] for i in range(8)}

            async def rollout(client: PolicyClient, i: int) -> None:
                for _ in range(4):
                    x = np.full((1, 128, 128), i * 10 + len(seen[i]), np.float32)  # 64 KiB: by reference
                    res = await client.act(f"r{i}", {"x": x})
                    assert res.seq == len(seen[i])
                    seen[i].append(res.batch)
                    assert res.chunk["shape"].tolist() == [1, 128, 128] and res.chunk["first"][0] == x[0, 0, 0]
                    assert res.chunk["sum"] == x.sum()

            async def redis_in() -> int:
                return int((await r.info("stats"))["total_net_input_bytes"])

            before = await redis_in()
            await asyncio.gather(*[rollout(shared, i) for i in (1, 3, 5, 7)])  # 1 MiB of arrays
            assert await redis_in() - before < 200_000  # the arrays did not pass through Redis
            await asyncio.gather(*[rollout(shared if i % 2 else inline, i) for i in range(8)])
            assert len(os.listdir(frames_dir)) == 4  # one segment per shared-frame rollout
            results = await shared.act_many([(f"r{i}", {"x": np.zeros((1, 128, 128), np.float32)})
                                             for i in (1, 3)])
            assert all(res.chunk["shape"].tolist() == [1, 128, 128] for res in results)
            shared.close()
            assert os.listdir(frames_dir) == []
            await r.aclose()
        assert sum(handler.batches) == 50 and max(handler.batches) > 1

    asyncio.run(main())


def test_shared_frames_a_worker_cannot_reach_get_a_clear_error(redis_url, tmp_path):
    async def main():
        async with serving(redis_url, EchoHandler(), frames_dir=str(tmp_path / "worker-host")):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10, shared_frames=True,
                                                                  frames_dir=str(tmp_path)))
            with pytest.raises(PolicyErrorReply) as err:
                await client.act("remote", {"x": np.zeros((1, 128, 128), np.float32)})
            assert err.value.code == Status.FRAMES_UNAVAILABLE
            assert "turn shared frames off" in err.value.detail
            res = await client.act("remote", {"x": np.ones((1, 2), np.float32)})  # small arrays go inline
            assert res.chunk["echo"].tolist() == [[1.0, 1.0]]
            client.close()
            await r.aclose()
        async with serving(redis_url, EchoHandler(), shared_frames=False):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10, shared_frames=True,
                                                                  frames_dir=str(tmp_path)))
            with pytest.raises(PolicyErrorReply) as err:
                await client.act("off", {"x": np.zeros((1, 128, 128), np.float32)})
            assert err.value.code == Status.FRAMES_UNAVAILABLE and "does not read" in err.value.detail
            client.close()
            await r.aclose()

    asyncio.run(main())


def test_stale_replies_are_ignored(redis_url):
    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        keys = Keys()
        reply_key = keys.replies("p", "r0")
        # replies of an earlier run that used the same rollout id sit in the reply stream, one with the
        # very sequence number the new run starts with
        await r.xadd(reply_key, Reply(seq=7, status=Status.OK, action=b"\x80").to_fields())
        await r.xadd(reply_key, Reply(seq=0, status=Status.OK, action=b"\x80").to_fields())
        async with serving(redis_url, EchoHandler()):
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
            res = await client.act("r0", {"x": np.full((1, 1), 3.0, np.float32)})
            assert res.seq == 0 and res.chunk["echo"][0, 0] == 3.0
        await r.aclose()

    asyncio.run(main())


def test_client_raises_clear_timeout_when_no_worker(redis_url):
    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        client = impatient_client(r)
        t0 = time.perf_counter()
        with pytest.raises(PolicyTimeout, match="are policy workers running"):
            await client.act("r0", {"x": np.zeros((1, 1), np.float32)})
        assert time.perf_counter() - t0 < 5
        assert await r.xlen(Keys().requests("nobody")) == 0  # giving up, it deleted its sends (cancel)
        await r.aclose()

    asyncio.run(main())


def test_expired_request_is_answered_without_inference(redis_url):
    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        handler = EchoHandler()
        request = Request("late", 0, encode({"x": np.zeros((1, 1), np.float32)}), ttl_ms=300)
        await r.xadd(Keys().requests("p", 0), request.to_fields())
        await asyncio.sleep(0.5)  # the request's 300 ms TTL runs out before any worker exists
        async with serving(redis_url, handler):
            await asyncio.sleep(0.5)
        reply = Reply.from_fields((await r.xrange(Keys().replies("p", "late")))[0][1])
        assert reply.status == Status.EXPIRED and reply.nonce == request.nonce and handler.batches == []
        await r.aclose()

    asyncio.run(main())


@contextlib.contextmanager
def served_in_a_thread(url: str, handler):
    """`serving` on an event loop of its own, for tests of the sync client."""
    ready = threading.Event()
    stop_flag = threading.Event()

    def serve() -> None:
        async def main():
            async with serving(url, handler):
                ready.set()
                while not stop_flag.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert ready.wait(10)
        yield
    finally:
        stop_flag.set()
        t.join(20)


def test_sync_client_round_trip(redis_url):
    with served_in_a_thread(redis_url, EchoHandler()):
        client = SyncPolicyClient(connect_sync(RedisSettings(url=redis_url)), "p",
                                  settings=ClientSettings(deadline_s=10))
        for step in range(3):
            res = client.act("sync", {"x": np.full((1, 2), step, np.float32)})
            assert res.seq == step and res.chunk["echo"][0, 0] == step


def test_the_sync_client_steps_many_rollouts_in_one_call(redis_url):
    """`SyncPolicyClient.act_many`: each rollout gets its own chunk, a bad observation its error in
    its place; rollouts sent to a shard no worker reads time out alone, and their sends are deleted."""
    r = connect_sync(RedisSettings(url=redis_url))
    with served_in_a_thread(redis_url, EchoHandler()):
        client = SyncPolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
        for step in range(3):
            items = [(f"s{i}", {"x": np.array([[i, step]], np.float32)}) for i in range(6)]
            if step == 1:
                items[2] = ("s2", {"y": np.zeros(1)})
            for i, res in enumerate(client.act_many(items)):
                if step == 1 and i == 2:
                    assert isinstance(res, PolicyErrorReply) and res.code == Status.SCHEMA_MISMATCH
                    continue
                assert not isinstance(res, Exception), res
                assert res.seq == step and res.chunk["echo"].tolist() == [[i, step]]
        with pytest.raises(ValueError, match="at most once"):
            client.act_many([("s0", {"x": np.zeros((1, 1), np.float32)})] * 2)
        # the worker reads shard 0 only: this client's shard-1 rollouts are never answered
        split = SyncPolicyClient(r, "p", shards=2, settings=ClientSettings(deadline_s=1.5, reply_timeout_s=0.5))
        names = [f"m{i}" for i in range(8)]
        unread = {n for n in names if shard_of(n, 2) == 1}
        assert 0 < len(unread) < len(names)
        results = split.act_many([(n, {"x": np.array([[i, 0]], np.float32)}) for i, n in enumerate(names)])
        for i, (name, res) in enumerate(zip(names, results, strict=True)):
            if name in unread:
                assert isinstance(res, PolicyTimeout) and "(1 sends)" not in str(res), res  # resent, then gave up
            else:
                assert not isinstance(res, Exception), res
                assert res.sends == 1 and res.chunk["echo"].tolist() == [[i, 0]]
        assert r.xlen(Keys().requests("p", 1)) == 0  # giving up, it deleted what it had sent
    r.close()


def test_action_chunker_queries_only_when_chunk_is_used_up():
    chunker = ActionChunker(action_horizon=8)
    queries = 0
    executed = []
    for _ in range(20):
        if chunker.needs_query():
            queries += 1
            chunker.set_chunk({"a": np.arange(40, dtype=np.float32).reshape(1, 40, 1)})
        chunk, t = chunker.next()
        executed.append(int(chunk["a"][0, t, 0]))
    assert queries == 3
    assert executed == list(range(8)) * 2 + list(range(4))
    short = ActionChunker(action_horizon=8)
    short.set_chunk({"a": np.zeros((1, 5, 1))})
    assert [short.next()[1] for _ in range(5)] == [0, 1, 2, 3, 4] and short.needs_query()


class ChunkHandler(EchoHandler):
    """Answers a 40-step chunk (step t holds t), beside a 1-D array and a note that have no steps."""

    def infer(self, batch):
        steps = np.arange(40, dtype=np.float32).reshape(1, 40, 1)
        return [{"action.arm": np.repeat(steps, 3, axis=2), "gain": np.ones(4, np.float32), "note": "random"}
                for _ in batch]


def test_a_request_can_ask_for_only_the_steps_it_executes(redis_url):
    async def main():
        async with serving(redis_url, ChunkHandler()):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
            obs = {"x": np.zeros((1, 1), np.float32)}
            whole = await client.act("w", obs)
            eight = await client.act("e", obs, steps=8)
            assert whole.chunk["action.arm"].shape == (1, 40, 3)
            assert eight.chunk["action.arm"].shape == (1, 8, 3)
            assert eight.chunk["action.arm"][0, :, 0].tolist() == list(range(8))  # the first 8, in order
            assert eight.chunk["gain"].shape == (4,) and eight.chunk["note"] == "random"  # no time axis: as is
            more = await client.act("m", obs, steps=100)  # more than the chunk has: the whole chunk
            assert more.chunk["action.arm"].shape == (1, 40, 3)
            many = await client.act_many([("a", obs), ("b", obs)], steps=2)
            assert [m.chunk["action.arm"].shape for m in many] == [(1, 2, 3)] * 2
            with pytest.raises(ValueError, match="steps must be >= 0"):
                await client.act("neg", obs, steps=-1)
            # a raw client sending a bad `steps` gets bad_request on its reply stream; the worker goes on
            keys = Keys()
            reply_to = keys.replies("p", "raw", 0)
            await r.xadd(keys.requests("p", 0), {"v": "2", "rollout": "raw", "seq": "0", "nonce": "n0nce-raw",
                                                 "ttl_ms": "10000", "obs": b"\x80", "steps": "-3"})
            got = await r.xread({reply_to: "0-0"}, block=5000)
            reply = Reply.from_fields(got[0][1][0][1])
            assert reply.status == Status.BAD_REQUEST and "'steps' must be >= 0" in reply.error
            assert reply.nonce == "n0nce-raw"
            after = await client.act("after", obs, steps=8)
            assert after.chunk["action.arm"].shape == (1, 8, 3)
            await r.aclose()

    asyncio.run(main())
