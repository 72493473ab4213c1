"""The Isaac Lab adapter, exercised on mjlab (Isaac Lab-style manager-based API on MuJoCo-Warp, CPU):
a vectorised G1 env (2 envs, fixed base, ego camera) runs episodes through a real redis-server, a
policy worker and its micro-batcher, in the REAL_G1 schema, for a few chunks.

Skipped where mjlab is not importable (it pins mujoco 3.11, so it lives in its own venv; see
docs/INTEGRATIONS.md). The pure-numpy translation helpers are tested everywhere.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from rolloutq.sim_workers import real_g1
from rolloutq.sim_workers.adapters._isaaclab_env import resize_nearest
from rolloutq.sim_workers.adapters._isaaclab_g1 import quat_to_matrix


def test_translation_helpers():
    q = np.array([np.cos(0.25), 0.0, 0.0, np.sin(0.25)])  # 0.5 rad about z
    r = quat_to_matrix(q)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(r[0, :2], [np.cos(0.5), -np.sin(0.5)], atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix(np.roll(q, -1), "xyzw"), r)  # Isaac Lab 3.0's order
    g1 = real_g1
    v = g1.pose_to_9d(np.array([1.0, 2.0, 3.0]), np.eye(3))
    np.testing.assert_allclose(v, [1, 2, 3, 1, 0, 0, 0, 1, 0])
    chunk = {k: np.zeros((1, 40, d), np.float32) for k, d in real_g1.ACTION_DIMS.items()}
    chunk["left_arm"][0, 3] = 1.0
    chunk["right_hand"][0, 3] = 2.0
    a = np.asarray(g1.chunk_step_to_env_action(chunk, 3))
    assert a.shape == (1, 28) and a[0, :7].sum() == 7 and a[0, 21:].sum() == 14
    assert resize_nearest(np.zeros((32, 48, 3), np.uint8), 64).shape == (64, 64, 3)


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~30 s with Warp's kernel cache warm; the first run compiles CPU kernels (minutes)
def test_vectorised_mjlab_g1_through_redis(redis_url):
    pytest.importorskip("mjlab.envs", reason="mjlab (with its own deps: mujoco 3.11, warp) is not importable in "
                        "this interpreter: run this test with the mjlab venv's python (docs/INTEGRATIONS.md)")
    from rolloutq.broker.client import PolicyClient
    from rolloutq.broker.connection import connect_async
    from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
    from rolloutq.policy_workers.base import PolicyBackend, PolicyMetadata
    from rolloutq.policy_workers.batching import check_schema
    from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings
    from rolloutq.sim_workers.adapters.isaaclab import VectorAdapter
    from rolloutq.sim_workers.vector import EpisodeSpec, run_vector

    dims = real_g1.ACTION_DIMS
    schema = {"video.ego_view": {"dtype": "uint8", "shape": [1, 2, 64, 64, 3]},
              **{f"state.{k}": {"dtype": "float32", "shape": [1, 1, d]} for k, d in
                 {"left_wrist_eef_9d": 9, "right_wrist_eef_9d": 9, "left_arm": 7, "right_arm": 7,
                  "left_hand": 7, "right_hand": 7, "waist": 3}.items()},
              "annotation.human.task_description": {"kind": "text"}}

    class ArmsUp(PolicyBackend):
        """Test double in the REAL_G1 schema: a constant chunk raising the left elbow to 0.3 rad."""

        batches: list[int] = []

        def load(self) -> None:
            pass

        def metadata(self) -> PolicyMetadata:
            return PolicyMetadata(model_id="arms-up", observation_schema=schema,
                                  action_schema={k: {"dtype": "float32", "shape": [1, 40, d]} for k, d in dims.items()},
                                  chunk_length=40, action_horizon=8)

        def infer(self, batch):
            self.batches.append(len(batch))
            assert all(check_schema(o, schema) is None for o in batch)
            chunk = {k: np.zeros((1, 40, d), np.float32) for k, d in dims.items()}
            chunk["left_arm"][..., 3] = 0.3
            return [chunk for _ in batch]

    venv = VectorAdapter(framework="mjlab", device="cpu", num_envs=2, schema="real_g1",
                         env_cfg="rolloutq.sim_workers.adapters._mjlab_g1:make_env_cfg",
                         env_cfg_kwargs={"camera": (32, 32)}, camera="sensor:ego", image_size=64, max_steps=16)
    assert venv.num_envs == 2 and venv.schema.action_dim == 29
    backend = ArmsUp()

    async def main():
        rs = RedisSettings(url=redis_url)
        ws = PolicyWorkerSettings(redis=rs, worker=WorkerSettings(
            policy="g1", batch=BatchSettings(max_batch_size=8, max_wait_ms=20)))
        worker = PolicyWorker(ws, backend=backend)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        r = connect_async(rs)
        client = PolicyClient(r, "g1", settings=ClientSettings(deadline_s=60))
        await client.metadata(wait_s=30)
        try:
            return await run_vector(venv, client, [EpisodeSpec(episode=i, seed=10 + i) for i in range(3)],
                                    action_horizon=8, rollout_prefix="g1", close=False)
        finally:
            stop.set()
            await task
            await r.aclose()

    records = asyncio.run(main())
    try:
        assert sorted(r.episode for r in records) == [0, 1, 2]
        assert all(r.outcome in ("success", "failure") and r.steps == 16 and r.policy_calls == 2
                   for r in records), records
        assert max(backend.batches) == 2, backend.batches  # both envs' requests in one forward pass
        elbow = venv.schema.robot.joint_names.index("left_elbow_joint")
        q = venv.schema.robot.data.joint_pos[0, elbow].item()
        assert abs(q - 0.3) < 0.15, q  # the chunk's left_arm command reached the joint
        assert venv.frame(0) is not None and venv.frame(0).std() > 0  # the camera rendered something
    finally:
        venv.close()
