"""Client and consumer over a real redis-server: ordering, isolation, late workers, errors, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

import numpy as np
import pytest

from broker.client import ActionChunker, PolicyClient, SyncPolicyClient
from broker.codec import encode
from broker.connection import connect_async, connect_sync
from broker.consumer import StreamConsumer
from broker.errors import PolicyErrorReply, PolicyTimeout, SharedFramesUnavailable
from broker.keys import GROUP, Keys
from broker.schema import Reply, Request, Status
from broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
from policy_workers.batching import SchemaChecker
from policy_workers.batching import split as split_rows


class EchoHandler:
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
    """A batch's replies go out `reply_group` at a time: every rollout still gets its own, and every
    request is acked and deleted."""
    group = WorkerSettings().reply_group
    n = 2 * group + 5

    async def main():
        handler = EchoHandler()
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=64, max_wait_ms=500,
                                                                   dispatch="deadline")) as consumer:
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20))
            writes = []
            original = consumer._write_replies

            async def counting(replies):
                writes.append(len(replies))
                await original(replies)

            consumer._write_replies = counting
            results = await client.act_many([(f"g{i}", {"x": np.array([[i, 0]], np.float32)}) for i in range(n)])
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


class RowsHandler:
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
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=5, max_wait_ms=300,
                                                                 dispatch="deadline")):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))

            def obs(first: int, n: int) -> dict:
                return {"x": np.arange(first, first + 2 * n, dtype=np.float32).reshape(n, 2),
                        "task": [["pick"]] * n}

            # 3 rows + 1 + 1 fill a batch of 5 rows: one forward pass, each reply its own rows
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


def test_a_simulator_renders_into_frame_views_and_the_worker_sees_each_step(redis_url, tmp_path):
    frames_dir = str(tmp_path)

    async def main():
        async with serving(redis_url, SumHandler(), frames_dir=frames_dir):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20, shared_frames=True,
                                                                  frames_dir=frames_dir))
            layout = {"x": ((1, 128, 128), np.float32)}
            for step in range(3):
                x = client.frame_views("v", layout)["x"]
                x[:] = step + 1  # the "render", straight into shared memory
                res = await client.act("v", {"x": x})
                assert res.chunk["first"][0] == step + 1 and res.chunk["sum"] == (step + 1) * 128 * 128
            assert len(os.listdir(frames_dir)) == 1
            plain = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20))
            with pytest.raises(SharedFramesUnavailable, match="shared_frames=True"):
                plain.frame_views("v", layout)
            client.close()
            await r.aclose()

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


class StagingHandler(EchoHandler):
    """Stages each request on the inference thread as it arrives; x == -1 fails to stage."""

    stages = True

    def __init__(self) -> None:
        super().__init__()
        self.stage_threads: set[str] = set()
        self.staged_batches: list[bool] = []

    def stage(self, obs):
        self.stage_threads.add(threading.current_thread().name)
        if float(np.asarray(obs["x"]).reshape(-1)[0]) == -1:
            raise RuntimeError("device out of memory (test)")
        return ("staged", obs)

    def infer(self, batch):
        self.staged_batches.append(all(isinstance(b, tuple) and b[0] == "staged" for b in batch))
        return super().infer([b[1] for b in batch])


def test_staging_runs_per_request_on_the_inference_thread_and_fails_alone(redis_url):
    async def main():
        handler = StagingHandler()
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=8, max_wait_ms=20)):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10, max_resends=1, backoff_s=0.01))
            good = [client.act(f"r{i}", {"x": np.full((1, 1), i, np.float32)}) for i in range(6)]
            results = await asyncio.gather(*good, client.act("bad", {"x": np.full((1, 1), -1, np.float32)}),
                                           return_exceptions=True)
            assert [res.chunk["echo"][0, 0] for res in results[:6]] == list(range(6))
            assert isinstance(results[6], PolicyErrorReply) and results[6].code == Status.INFERENCE_FAILED
            assert "preparing the observation failed (RuntimeError" in results[6].detail
            await r.aclose()
        assert handler.stage_threads == {"rolloutq-infer_0"}
        assert all(handler.staged_batches) and sum(handler.batches) == 6

    asyncio.run(main())


class ReadStagingHandler(StagingHandler):
    """Stages the requests of one read in one call (`stage_many`), recording each hand-over's size."""

    def __init__(self) -> None:
        super().__init__()
        self.handovers: list[int] = []

    def stage_many(self, observations):
        self.handovers.append(len(observations))
        out = []
        for obs in observations:
            try:
                out.append((True, self.stage(obs)))
            except Exception as e:
                out.append((False, e))
        return out


def test_the_requests_of_one_read_are_staged_in_one_hand_over(redis_url):
    async def main():
        handler = ReadStagingHandler()
        async with serving(redis_url, handler, batch=BatchSettings(max_batch_size=16, max_wait_ms=300,
                                                                   dispatch="deadline")):
            r = connect_async(RedisSettings(url=redis_url))
            client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10, max_resends=1, backoff_s=0.01))
            items = [(f"h{i}", {"x": np.full((1, 1), -1 if i == 4 else i, np.float32)}) for i in range(12)]
            results = await client.act_many(items)  # one pipeline of 12 XADDs: read together
            assert [res.chunk["echo"][0, 0] for i, res in enumerate(results) if i != 4] == [i for i in range(12)
                                                                                              if i != 4]
            assert isinstance(results[4], PolicyErrorReply) and results[4].code == Status.INFERENCE_FAILED
            await r.aclose()
        # a blocked read returns with the first entry; the rest of the pipeline comes in the next ones
        assert max(handler.handovers) > 1 and len(handler.handovers) < sum(handler.handovers)
        assert handler.stage_threads == {"rolloutq-infer_0"} and all(handler.staged_batches)

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


def test_sync_client_round_trip(redis_url):
    ready = threading.Event()
    stop_flag = threading.Event()

    def serve() -> None:
        async def main():
            async with serving(redis_url, EchoHandler()):
                ready.set()
                while not stop_flag.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert ready.wait(10)
        client = SyncPolicyClient(connect_sync(RedisSettings(url=redis_url)), "p",
                                  settings=ClientSettings(deadline_s=10))
        for step in range(3):
            res = client.act("sync", {"x": np.full((1, 2), step, np.float32)})
            assert res.seq == step and res.chunk["echo"][0, 0] == step
    finally:
        stop_flag.set()
        t.join(20)


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


async def _calls(r, command: str = "xreadgroup") -> int:
    """How many times Redis has run `command` (INFO commandstats)."""
    stats = await r.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_polling_worker_reads_without_blocking_only_while_a_rollout_is_due(redis_url):
    """`poll_ms`: while a closed-loop rollout steps its simulator the worker reads without blocking
    (every ms, then back to back near the moment it is due; a blocking worker issues one read per
    `block_ms` or request); not while the model runs; and once the rollout has left, polling stops
    after `poll_ms` and the worker is back to one blocking read per `block_ms`."""

    async def closed_loop(client: PolicyClient, cycles: int) -> None:
        for i in range(cycles):
            await client.act("r", {"x": np.full((2,), i, np.float32)})
            await asyncio.sleep(0.03)  # the simulator's steps

    async def main() -> dict[str, int]:
        r = connect_async(RedisSettings(url=redis_url))
        client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
        counts = {}
        for name, poll_ms, infer_s in (("block", 0.0, 0.0), ("poll", 50.0, 0.0), ("poll_slow_model", 50.0, 0.1)):
            async with serving(redis_url, EchoHandler(delay_s=infer_s), poll_ms=poll_ms) as consumer:
                await closed_loop(client, 10)  # the batcher learns the think time
                before = await _calls(r)
                await closed_loop(client, 10)
                counts[name] = await _calls(r) - before
                await asyncio.sleep(0.3)  # the rollout has left: polling must stop
                before = await _calls(r)
                await asyncio.sleep(0.5)
                counts[f"{name}_idle"] = await _calls(r) - before
                assert consumer.stats.batched_items_total == 20
        await r.aclose()
        return counts

    counts = asyncio.run(main())
    assert counts["block"] <= 10 * 4, counts  # one read per 20 ms block or request
    assert counts["poll"] >= 3 * counts["block"], counts  # ~one read per ms of the 30 ms steps
    # a 100 ms inference per cycle adds no reads: polling through it would add ~100 a cycle
    assert counts["poll_slow_model"] <= 1.5 * counts["poll"] + 20, counts
    for name in ("block", "poll", "poll_slow_model"):
        assert counts[f"{name}_idle"] <= 0.5 / 0.02 + 5, counts


def test_a_polling_client_reads_near_the_expected_reply_and_follows_a_faster_policy(redis_url):
    """`ClientSettings.poll_ms`: `act`, `act_many` and the sync `act` sleep through most of the
    usual round trip and poll around its end (more XREADs than a blocking client, same replies);
    when the policy gets faster the client's wait follows within a step, because it times round
    trips by Redis's clock and not by when it happened to read the reply."""

    async def main() -> None:
        r = connect_async(RedisSettings(url=redis_url))
        handler = EchoHandler(delay_s=0.05)
        # deadline dispatch: each request is served when it comes, the client alone sets the pace
        async with serving(redis_url, handler, batch=BatchSettings(dispatch="deadline", max_wait_ms=1)):
            clients = {mode: PolicyClient(r, "p", settings=ClientSettings(deadline_s=10, poll_ms=poll))
                       for mode, poll in (("block", 0.0), ("poll", 5.0))}
            sync = SyncPolicyClient(connect_sync(RedisSettings(url=redis_url)), "p",
                                    settings=ClientSettings(deadline_s=10, poll_ms=5.0))
            calls = {}
            for mode, client in clients.items():
                before = await _calls(r, "xread")
                for i in range(12):
                    got = await client.act(f"{mode}-one", {"x": np.full((2,), i, np.float32)})
                    assert got.chunk["echo"].tolist() == [i, i]
                    many = await client.act_many([(f"{mode}-a", {"x": np.full((2,), i, np.float32)}),
                                                  (f"{mode}-b", {"x": np.full((2,), -i, np.float32)})])
                    assert [m.chunk["echo"][0] for m in many] == [i, -i]
                calls[mode] = await _calls(r, "xread") - before
            for i in range(12):
                got = await asyncio.to_thread(sync.act, "sync", {"x": np.full((2,), i, np.float32)})
                assert got.chunk["echo"].tolist() == [i, i]
            assert calls["poll"] > 2 * calls["block"], calls
            handler.delay_s = 0.0  # the policy gets faster
            fast = [(await clients["poll"].act("poll-one", {"x": np.zeros(2, np.float32)})).round_trip_ms
                    for _ in range(3)]
            fast_sync = [(await asyncio.to_thread(sync.act, "sync", {"x": np.zeros(2, np.float32)})).round_trip_ms
                         for _ in range(3)]
            # the first fast reply waits out the old estimate (~48 ms); the next ones do not
            assert max(fast[1:]) < 25 and max(fast_sync[1:]) < 25, (fast, fast_sync)
        await r.aclose()

    asyncio.run(main())
