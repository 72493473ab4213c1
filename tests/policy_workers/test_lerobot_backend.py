"""The `lerobot` backend serves a locally created ACT policy (random init, tiny config) through a
real redis-server, a PolicyWorker and PolicyClients: one forward pass for a batch of rollouts.

Skipped when LeRobot is not importable here (see docs/INTEGRATIONS.md for the install lines)."""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
from rolloutq.policy_workers.backends import make_backend
from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lerobot") is None,
                                reason="lerobot not installed (pip install --no-deps lerobot==0.4.4 + deps, "
                                       "see docs/INTEGRATIONS.md)")

STATE = {"state.left_arm": 3, "state.right_arm": 2}


@pytest.fixture(scope="module")
def act_dir(tmp_path_factory):
    from rolloutq.policy_workers.backends.lerobot import import_lerobot

    import_lerobot()  # torchvision shim before LeRobot's own imports
    import torch
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    torch.manual_seed(0)
    cfg = ACTConfig(
        input_features={"observation.images.ego": PolicyFeature(FeatureType.VISUAL, (3, 48, 48)),
                        "observation.state": PolicyFeature(FeatureType.STATE, (5,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
        chunk_size=12, n_action_steps=4, dim_model=32, n_heads=2, dim_feedforward=64,
        n_encoder_layers=1, n_decoder_layers=1, use_vae=False, pretrained_backbone_weights=None,
        device="cpu",
        normalization_mapping={"VISUAL": NormalizationMode.MEAN_STD, "STATE": NormalizationMode.MEAN_STD,
                               "ACTION": NormalizationMode.MEAN_STD},
    )
    policy = ACTPolicy(cfg)
    path = tmp_path_factory.mktemp("act")
    policy.save_pretrained(path)
    stats = {"observation.state": {"mean": torch.zeros(5), "std": torch.ones(5)},
             "observation.images.ego": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)},
             "action": {"mean": torch.arange(6.0), "std": torch.full((6,), 0.01)}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    pre.save_pretrained(path)
    post.save_pretrained(path)
    return str(path)


def _obs(rng: np.random.Generator, frames: int = 2) -> dict:
    return {
        "video": {"ego_view": rng.integers(0, 255, (1, frames, 64, 64, 3), dtype=np.uint8)},
        "state": {k.split(".")[1]: rng.standard_normal((1, 1, d)).astype(np.float32) for k, d in STATE.items()},
        "annotation.human.task_description": [["pick up the apple"]],
    }


def _backend(path: str):
    return make_backend("lerobot", path=path,
                        inputs={"observation.images.ego": "video.ego_view", "observation.state": STATE},
                        outputs={"left": 4, "gripper": [4, 6]})


def test_mapping_batching_and_processors(act_dir):
    backend = _backend(act_dir)
    backend.load()
    meta = backend.metadata()
    assert meta.chunk_length == 12 and meta.action_horizon == 4
    assert meta.observation_schema["state.left_arm"]["shape"] == [1, -1, 3]
    assert meta.action_schema == {"left": {"dtype": "float32", "shape": [1, 12, 4]},
                                  "gripper": {"dtype": "float32", "shape": [1, 12, 2]}}
    assert meta.extra["processors"] is True
    rng = np.random.default_rng(0)
    batch = [_obs(rng) for _ in range(5)]
    out = backend.infer(batch)
    assert [c["left"].shape for c in out] == [(1, 12, 4)] * 5
    # the postprocessor unnormalised: mean 0..5, std 0.01
    assert np.allclose(out[0]["gripper"].mean(), 4.5, atol=0.5)
    # batched forward == one-by-one forward (eval mode, no dropout): batching does not change results
    single = [backend.infer([o])[0] for o in batch]
    for a, b in zip(out, single, strict=True):
        np.testing.assert_allclose(a["left"], b["left"], atol=1e-4)


def test_served_through_redis(act_dir, redis_url):
    async def main():
        rs = RedisSettings(url=redis_url)
        backend = _backend(act_dir)
        ws = PolicyWorkerSettings(backend="lerobot", redis=rs, worker=WorkerSettings(
            policy="act", batch=BatchSettings(max_batch_size=8, max_wait_ms=50)))
        worker = PolicyWorker(ws, backend=backend)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        r = connect_async(rs)
        client = PolicyClient(r, "act", settings=ClientSettings(deadline_s=60))
        meta = await client.metadata(wait_s=60)
        assert meta["model_id"].startswith("lerobot:") and meta["chunk_length"] == 12
        rng = np.random.default_rng(1)
        res = await asyncio.gather(*[client.act(f"r{i}", _obs(rng)) for i in range(6)])
        assert all(x.chunk["left"].shape == (1, 12, 4) and x.chunk["gripper"].shape == (1, 12, 2) for x in res)
        assert max(x.batch for x in res) > 1, [x.batch for x in res]
        bad = await asyncio.gather(client.act("bad", {"video": {"ego_view": np.zeros((1, 8), np.uint8)}}),
                                   return_exceptions=True)
        assert isinstance(bad[0], Exception)
        stop.set()
        await task
        await r.aclose()

    asyncio.run(main())


def test_diffusion_with_observation_history(tmp_path):
    """A queue-based policy (Diffusion, n_obs_steps=2): the history comes from the request's time axis."""
    from rolloutq.policy_workers.backends.lerobot import import_lerobot

    import_lerobot()
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    torch.manual_seed(0)
    cfg = DiffusionConfig(
        input_features={"observation.images.ego": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
                        "observation.state": PolicyFeature(FeatureType.STATE, (3,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        n_obs_steps=2, horizon=8, n_action_steps=4, down_dims=(16, 32), crop_shape=None,
        pretrained_backbone_weights=None, use_group_norm=True, num_inference_steps=3,
        diffusion_step_embed_dim=16, spatial_softmax_num_keypoints=8, device="cpu")
    DiffusionPolicy(cfg).save_pretrained(tmp_path)
    backend = make_backend("lerobot", path=str(tmp_path),
                           inputs={"observation.images.ego": "video.ego", "observation.state": "state.s"})
    backend.load()
    meta = backend.metadata()
    assert meta.chunk_length == 4 and meta.extra["n_obs_steps"] == 2 and meta.extra["processors"] is False
    rng = np.random.default_rng(0)
    batch = [{"video.ego": rng.integers(0, 255, (1, frames, 40, 40, 3), dtype=np.uint8),
              "state.s": rng.standard_normal((1, frames, 3)).astype(np.float32)} for frames in (1, 2, 3)]
    out = backend.infer(batch)  # 1 frame is padded to 2, 3 frames keep the last 2; 40x40 resized to 32x32
    assert [c["action"].shape for c in out] == [(1, 4, 2)] * 3
    assert all(np.isfinite(c["action"]).all() for c in out)
