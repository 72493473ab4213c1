"""Broker overhead: rolloutq (Redis streams + micro-batching worker, `null` backend) against the
reference serving design (Ray Serve + FastAPI, pickled observations over HTTP, one forward call per
request, also with a no-op model), at 1, 16 and 64 concurrent closed-loop rollouts, for a 1 KB and
a ~400 KB (REAL_G1-shaped: 2x256x256x3 uint8 + states) observation, on loopback.

Each rollout sends its next observation as soon as the previous reply arrives. Load comes from
several client processes so the client is not the bottleneck on a small machine.

    python benchmarks/broker_overhead.py --seconds 5 --out benchmarks/out/broker_overhead.json
"""


import argparse
import asyncio
import json
import multiprocessing as mp
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request  # module level: the handler's annotations resolve here
from fastapi.responses import Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rolloutq.broker import real_g1  # noqa: E402
from rolloutq.broker.client import PolicyClient  # noqa: E402
from rolloutq.broker.connection import connect_async  # noqa: E402
from rolloutq.broker.embedded import EmbeddedRedis, free_port  # noqa: E402
from rolloutq.broker.settings import ClientSettings, RedisSettings  # noqa: E402


def make_obs(kind: str) -> dict:
    rng = np.random.default_rng(0)
    if kind == "1KB":
        return {
            "state.joints": rng.standard_normal((1, 1, 200)).astype(np.float32),
            "annotation.human.task_description": [["pick up the apple and place it on the plate"]],
        }
    obs = {real_g1.VIDEO_KEY: rng.integers(0, 255, (1, 2, 256, 256, 3), dtype=np.uint8)}
    for k, d in real_g1.STATE_DIMS.items():
        obs[k] = rng.standard_normal((1, 1, d)).astype(np.float32)
    obs[real_g1.TEXT_KEY] = [["pick up the apple and place it on the plate"]]
    return obs


# -- load generators (run in client processes) ------------------------------------------------
async def _rq_clients(url: str, policy: str, rollouts: list[str], kind: str, seconds: float,
                      style: str) -> list[float]:
    r = connect_async(RedisSettings(url=url))
    client = PolicyClient(r, policy, settings=ClientSettings(deadline_s=30))
    obs = make_obs(kind)
    payload = client.codec.encode(obs)  # the sim encodes once per step either way
    lat: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def one(rid: str) -> None:
        await client.act(rid, payload)  # warm-up
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await client.act(rid, client.codec.encode(obs))
            lat.append((time.perf_counter() - t0) * 1000)

    async def vector() -> None:
        await client.act_many([(rid, payload) for rid in rollouts])  # warm-up
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            results = await client.act_many([(rid, client.codec.encode(obs)) for rid in rollouts])
            errors = [x for x in results if isinstance(x, Exception)]
            if errors:
                raise errors[0]
            # every rollout of the step is charged the whole call (encoding all K observations included)
            lat.extend([(time.perf_counter() - t0) * 1000] * len(results))

    if style == "vector":
        await vector()
    else:
        await asyncio.gather(*[one(x) for x in rollouts])
    await r.aclose()
    return lat


async def _http_clients(url: str, rollouts: list[str], kind: str, seconds: float) -> list[float]:
    import httpx

    obs = make_obs(kind)
    lat: list[float] = []
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=len(rollouts), max_keepalive_connections=len(rollouts))
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def one(rid: str) -> None:
            await http.post(url, content=pickle.dumps(obs))
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                resp = await http.post(url, content=pickle.dumps(obs))
                pickle.loads(resp.content)  # noqa: S301 - the reference design's own wire format, trusted here
                lat.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*[one(x) for x in rollouts])
    return lat


def _client_proc(args: tuple) -> list[float]:
    mode, target, policy, rollouts, kind, seconds = args
    if mode.startswith("rolloutq"):
        style = "vector" if mode.endswith("vector") else "rollout"
        return asyncio.run(_rq_clients(target, policy, rollouts, kind, seconds, style))
    return asyncio.run(_http_clients(target, rollouts, kind, seconds))


def drive(mode: str, target: str, policy: str, n: int, kind: str, seconds: float, procs: int) -> dict:
    procs = min(procs, n)
    groups = [[f"{mode}-{kind}-{n}-{i}" for i in range(n) if i % procs == p] for p in range(procs)]
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(procs) as pool:
        results = pool.map(_client_proc, [(mode, target, policy, g, kind, seconds) for g in groups])
    wall = time.perf_counter() - t0
    lat = [x for r in results for x in r]
    return {
        "system": mode.split("-")[0],
        "clients": "act_many per process" if mode.endswith("vector") else ("act per rollout" if
                                                                          mode.startswith("rolloutq") else "httpx"),
        "observation": kind,
        "rollouts": n,
        "requests": len(lat),
        "obs_per_s": round(len(lat) / seconds, 1),
        "round_trip_ms": {q: round(float(np.percentile(lat, v)), 3) for q, v in (("p50", 50), ("p99", 99))},
        "wall_s": round(wall, 2),
    }


# -- servers -------------------------------------------------------------------------------------
def start_reference(port: int) -> None:
    import ray
    from ray import serve

    api = FastAPI()

    @serve.deployment(max_ongoing_requests=256)
    @serve.ingress(api)
    class Reference:
        """The reference design: pickled observation in, one forward call per request, pickle out."""

        def __init__(self) -> None:
            self.chunk = {"action": np.zeros((1, 40, 7), np.float32)}

        def forward(self, obs: dict) -> dict:  # the no-op model, as the `null` backend
            return self.chunk

        @api.post("/act")
        async def act(self, request: Request) -> Response:
            obs = pickle.loads(await request.body())  # noqa: S301 - this is what rolloutq replaces
            return Response(pickle.dumps(self.forward(obs)), media_type="application/octet-stream")

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Reference.bind(), name="reference", route_prefix="/")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rollouts", default="1,16,64")
    p.add_argument("--kinds", default="1KB,400KB")
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--clients", default="rollout,vector",
                   help="rolloutq load styles: rollout (one PolicyClient.act loop per rollout) and/or vector "
                        "(each client process steps its rollouts together with act_many, as sim_workers.vector)")
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks/out/broker_overhead.json"))
    a = p.parse_args()
    ns = [int(x) for x in a.rollouts.split(",")]
    kinds = a.kinds.split(",")
    rows = []
    binary = shutil.which("redis-server", path="/usr/bin:/usr/local/bin") or None
    with EmbeddedRedis(binary=binary) as redis_server:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller",
                "policy-worker",
                "--backend",
                "null",
                "--policy",
                "bench",
                "--redis-url",
                redis_server.url,
                "--max-batch-size",
                str(a.max_batch_size),
                "--max-wait-ms",
                str(a.max_wait_ms),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            time.sleep(3)
            for style in a.clients.split(","):
                for kind in kinds:
                    for n in ns:
                        mode = "rolloutq-vector" if style == "vector" else "rolloutq"
                        row = drive(mode, redis_server.url, "bench", n, kind, a.seconds, a.client_procs)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
        finally:
            worker.terminate()
            worker.wait(20)
    if not a.skip_reference:
        port = free_port()
        start_reference(port)
        for kind in kinds:
            for n in ns:
                row = drive("reference", f"http://127.0.0.1:{port}/act", "", n, kind, a.seconds, a.client_procs)
                print(json.dumps(row), flush=True)
                rows.append(row)
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPUs",
        "redis": binary or "embedded",
        "settings": vars(a),
        "rows": rows,
    }
    from benchmarks.harness.record import make_record, write_record

    cmd = " ".join(["python benchmarks/broker_overhead.py", *sys.argv[1:]])
    write_record(make_record("broker-overhead", cmd, out), a.out)


if __name__ == "__main__":
    main()
