"""The Ray Serve deployment serves a rollout end to end and reports /stats and /healthz."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.embedded import free_port
from rolloutq.broker.settings import ClientSettings, RedisSettings, WorkerSettings
from rolloutq.policy_workers.loop import PolicyWorkerSettings
from rolloutq.policy_workers.serve import ServeSettings, deploy

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_serve():
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"MUJOCO_GL": "egl"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def test_serve_deployment_serves_a_rollout(redis_url, ray_serve):
    worker = PolicyWorkerSettings(
        backend="cnn",
        backend_options={"image_key": "video.top", "image_shape": [1, 1, 32, 32, 3], "state_dims": {"state.arm": 2},
                         "action_dims": {"arm": 2}},
        redis=RedisSettings(url=redis_url),
        worker=WorkerSettings(policy="served"),
    )
    deploy(worker, ServeSettings(replicas=1, num_cpus=0.5, health_check_timeout_s=60))

    async def rollout():
        r = connect_async(RedisSettings(url=redis_url))
        client = PolicyClient(r, "served", settings=ClientSettings(deadline_s=60))
        meta = await client.metadata(wait_s=60)
        assert meta["model_id"] == "cnn:random-init" and meta["parameters"] > 10_000
        obs = {"video.top": np.zeros((1, 1, 32, 32, 3), np.uint8), "state.arm": np.zeros((1, 1, 2), np.float32),
               "annotation.human.task_description": [["touch the red ball"]]}
        for step in range(3):
            res = await client.act("ray-rollout", obs)
            assert res.seq == step and res.chunk["arm"].shape == (1, 40, 2)
        await r.aclose()

    asyncio.run(rollout())
    base = f"http://127.0.0.1:{ray_serve}/policy/served"
    stats = httpx.get(f"{base}/stats", timeout=30).json()
    assert stats["model_id"] == "cnn:random-init"
    assert stats["total_calls"] == 3 and stats["batches"] == 3
    assert stats["device"] == "cpu" and stats["parameters"] > 10_000 and stats["load_time_s"] > 0
    assert stats["latency_ms"]["p50"] is not None
    assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
