"""Where one round trip's time goes: a single rollout against one policy worker, timestamped on
both sides with the same monotonic clock (`time.perf_counter`, CLOCK_MONOTONIC on Linux).

The worker runs in a child process with timing hooks wrapped around its stages (the reader's
`accept`, the batch runner's `_infer`, the reply writer's `write`, and redis-py's socket send and
receive); the client (this process) records its encode and its socket traffic the same way. Each
call's events are matched by time, and the report gives the median of each stage:

    client->worker read   from `act` to the worker starting to admit the request (encode, the
                          client's pipeline, Redis, the worker's read and parse)
    admit                 decode, checks, batcher
    to inference          dispatcher wake-up
    inference             the backend's call, including the hop to the inference thread and back
    to reply              reply encode, writer task
    reply write           the worker's reply pipeline (XADD, XACK, XDEL) until it has its answer
    total                 the client's round trip

Also the cost of the inference thread hop alone (`loop.run_in_executor` around a 21 ms sleep,
against the same sleep called directly). The hooks wrap private methods: this is a diagnostic for
this revision, not an API.

    python -m benchmarks.round_trip_trace --backend null --calls 300
    python -m benchmarks.round_trip_trace --backend benchmarks.slow_sims.policy:CostModelPolicy
    python -m benchmarks.round_trip_trace --shared-frames
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.record import make_record, write_record

Events = list[tuple[str, float]]
STAGES = (("client->worker read", None, "read"), ("admit", "read", "accepted"),
          ("to inference", "accepted", "infer0"), ("inference", "infer0", "infer1"),
          ("to reply", "infer1", "write0"), ("reply write", "write0", "write1"))


def _hook(cls: Any, name: str, events: Events, before: str, after: str) -> None:
    original = getattr(cls, name)

    async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        events.append((before, time.perf_counter()))
        try:
            return await original(self, *args, **kwargs)
        finally:
            events.append((after, time.perf_counter()))

    setattr(cls, name, timed)


def _hook_sockets(events: Events, prefix: str) -> None:
    import redis.asyncio.connection as rc

    _hook(rc.AbstractConnection, "send_packed_command", events, f"{prefix}send", f"{prefix}sent")
    _hook(rc.AbstractConnection, "read_response", events, f"{prefix}read0", f"{prefix}recv")


def _worker(url: str, backend: str, options: dict[str, Any], done: str, out: str) -> None:
    from rolloutq.broker import batch_runner, consumer, reply_writer
    from rolloutq.broker.settings import BatchSettings, RedisSettings, WorkerSettings
    from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings

    events: Events = []
    _hook(consumer.StreamConsumer, "accept", events, "read", "accepted")
    _hook(batch_runner.BatchRunner, "_infer", events, "infer0", "infer1")
    _hook(reply_writer.ReplyWriter, "write", events, "write0", "write1")
    _hook_sockets(events, "w-")
    worker = PolicyWorker(PolicyWorkerSettings(
        backend=backend, backend_options=options, redis=RedisSettings(url=url),
        worker=WorkerSettings(policy="trace", batch=BatchSettings(max_batch_size=16, max_wait_ms=5))))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        while not Path(done).exists():
            await asyncio.sleep(0.1)
        stop.set()
        await task

    asyncio.run(main())
    Path(out).write_text(json.dumps(events))


async def _client(url: str, calls: int, think_s: float, shared_frames: bool,
                  events: Events) -> list[tuple[float, float]]:
    from rolloutq.broker.client import PolicyClient, fetch_metadata
    from rolloutq.broker.connection import connect_async
    from rolloutq.broker.keys import Keys
    from rolloutq.broker.settings import ClientSettings, RedisSettings

    r = connect_async(RedisSettings(url=url))
    await fetch_metadata(r, Keys(), "trace", wait_s=60)
    client = PolicyClient(r, "trace", settings=ClientSettings(shared_frames=shared_frames))
    _hook_sockets(events, "c-")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (1, 1, 256, 256, 3), dtype=np.uint8)
    spans = []
    for _ in range(calls):
        obs = {"video.frame": frame, "state.vec": rng.random((1, 1, 8), dtype=np.float32),
               "annotation.human.task_description": [["pick up the apple"]]}
        t0 = time.perf_counter()
        await client.act("r0", obs)
        spans.append((t0, time.perf_counter()))
        await asyncio.sleep(think_s)
    await r.aclose()
    return spans


def _stages(spans: list[tuple[float, float]], events: Events) -> dict[str, float]:
    rows = []
    for t0, t1 in spans:
        seen = {k: v for k, v in events if t0 <= v <= t1 + 0.005}
        if all(k in seen for _, a, b in STAGES for k in (a, b) if k):
            rows.append([seen[b] - (seen[a] if a else t0) for _, a, b in STAGES] + [t1 - t0])
    if not rows:
        raise SystemExit("no call had every stage's events: is the worker's code what the hooks expect?")
    med = np.median(np.array(rows), axis=0) * 1000
    return {name: round(float(v), 3) for name, v in zip([s[0] for s in STAGES] + ["total"], med, strict=True)}


def _thread_hop(sleep_s: float = 0.021, n: int = 200) -> dict[str, float]:
    pool = ThreadPoolExecutor(1)

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        direct, hopped = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            time.sleep(sleep_s)
            direct.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await loop.run_in_executor(pool, time.sleep, sleep_s)
            hopped.append(time.perf_counter() - t0)
            await asyncio.sleep(0.003)
        return {"sleep_ms": sleep_s * 1000, "direct_p50_ms": round(float(np.median(direct)) * 1000, 3),
                "via_executor_p50_ms": round(float(np.median(hopped)) * 1000, 3)}

    try:
        return asyncio.run(main())
    finally:
        pool.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.round_trip_trace", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="null", help="policy backend (name or module:Class)")
    p.add_argument("--calls", type=int, default=300, help="round trips (the first 50 are not counted)")
    p.add_argument("--think-ms", type=float, default=20.0, help="the simulator's time between calls")
    p.add_argument("--shared-frames", action="store_true", help="the client sends its frame through shared memory")
    p.add_argument("--redis-server", default=shutil.which("redis-server"))
    p.add_argument("--out", default=None, help="write a record (.json) here")
    a = p.parse_args(argv)
    options = {"action_dims": {"action": 7}} if a.backend == "null" else {}
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "probe"
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        redis = subprocess.Popen([a.redis_server, "--port", str(port), "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        done, out = str(sock) + ".done", str(sock) + ".json"
        worker = mp.get_context("spawn").Process(target=_worker, args=(url, a.backend, options, done, out))
        try:
            time.sleep(0.3)
            worker.start()
            client_events: Events = []
            spans = asyncio.run(_client(url, a.calls, a.think_ms / 1000, a.shared_frames, client_events))
            Path(done).touch()
            worker.join(60)
            events = json.loads(Path(out).read_text()) + client_events
        finally:
            if worker.is_alive():
                worker.kill()
            redis.terminate()
    result = {"backend": a.backend, "shared_frames": a.shared_frames, "calls_counted": len(spans) - 50,
              "stages_p50_ms": _stages(spans[50:], events),
              "thread_hop": _thread_hop()}
    for name, ms in result["stages_p50_ms"].items():
        print(f"{name:22s} {ms:8.3f} ms")
    hop = result["thread_hop"]
    print(f"{hop['sleep_ms']:.0f} ms sleep: {hop['direct_p50_ms']:.3f} ms called directly, "
          f"{hop['via_executor_p50_ms']:.3f} ms through run_in_executor")
    if a.out:
        command = "python -m benchmarks.round_trip_trace " + " ".join(argv if argv is not None else sys.argv[1:])
        write_record(make_record("round-trip-trace", command, result), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
