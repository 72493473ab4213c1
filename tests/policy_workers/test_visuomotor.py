"""The visuomotor backend: checkpoint loading, schema, and batch invariance.

Batched inference must give the same chunks as one-at-a-time inference: every op in the network
is per-sample (GroupNorm, not BatchNorm; eval mode), so only float32 summation order can differ
between batch sizes. Tolerance: 2e-4 absolute on joint targets (radians) and hand closure (measured
worst case with the shipped checkpoint: 4.2e-5 at B=8, 4.6e-5 at B=32, on one CPU thread).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rolloutq.broker import real_g1
from rolloutq.policy_workers.backends import make_backend
from rolloutq.policy_workers.backends.visuomotor import DEFAULT_CHECKPOINT, VisuomotorNet, default_config
from safetensors.torch import save_file

ATOL = 2e-4


def random_obs(rng, n):
    obs = []
    for _ in range(n):
        o = {real_g1.VIDEO_KEY: rng.integers(0, 256, size=(1, 2, 256, 256, 3), dtype=np.uint8)}
        for key, dim in real_g1.STATE_DIMS.items():
            o[key] = rng.normal(0, 0.5, size=(1, 1, dim)).astype(np.float32)
        o[real_g1.TEXT_KEY] = [["pick up the apple and place it on the plate"]]
        obs.append(o)
    return obs


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = VisuomotorNet(default_config())
    path = tmp_path_factory.mktemp("ckpt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(default_config()))
    return path


def check_batch_invariance(backend, obs):
    batched = backend.infer(obs)
    assert len(batched) == len(obs)
    worst = 0.0
    for o, b in zip(obs, batched, strict=True):
        single = backend.infer([o])[0]
        for k in single:
            assert single[k].shape == b[k].shape and b[k].dtype == np.float32
            worst = max(worst, float(np.abs(single[k] - b[k]).max()))
    assert worst <= ATOL, worst


def test_metadata_and_shapes(random_checkpoint):
    backend = make_backend("visuomotor", checkpoint=str(random_checkpoint))
    backend.load()
    meta = backend.metadata()
    assert meta.chunk_length == 40 and meta.action_horizon == 8
    assert meta.parameters == sum(p.numel() for p in backend.net.parameters()) > 0
    assert meta.observation_schema["video.ego_view"]["shape"] == [1, 2, 256, 256, 3]
    chunk = backend.infer(random_obs(np.random.default_rng(0), 1))[0]
    assert set(chunk) == set(meta.action_schema)
    for k, spec in meta.action_schema.items():
        assert list(chunk[k].shape) == spec["shape"]


def test_batch_invariance_random_weights(random_checkpoint):
    backend = make_backend("visuomotor", checkpoint=str(random_checkpoint), exact_batch_invariance=False)
    backend.load()
    check_batch_invariance(backend, random_obs(np.random.default_rng(1), 8))


@pytest.mark.skipif(
    not (Path(DEFAULT_CHECKPOINT) / "model.safetensors").exists(), reason="no shipped checkpoint"
)
def test_batch_invariance_shipped_checkpoint():
    backend = make_backend("visuomotor", exact_batch_invariance=False)  # the stacked pass, within tolerance
    backend.load()
    assert backend.metadata().model_id.startswith("g1-bc")
    check_batch_invariance(backend, random_obs(np.random.default_rng(2), 8))


def test_exact_mode_makes_batched_and_alone_identical():
    backend = make_backend("visuomotor")  # exact_batch_invariance defaults to on
    backend.load()
    obs = random_obs(np.random.default_rng(0), 5)
    alone = [backend.infer([o])[0] for o in obs]
    together = backend.infer(obs)
    for a, t in zip(alone, together, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], t[k])


def test_the_shipped_checkpoint_is_package_data():
    """`rolloutq eval`'s default policy loads this checkpoint: it must ship in a plain (non-editable)
    install too, e.g. the Docker images, so it lives in the package and pyproject lists its files."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    package = root / "policy_workers"
    assert Path(DEFAULT_CHECKPOINT).resolve().is_relative_to(package)
    with open(root / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["rolloutq.policy_workers"]
    files = sorted(p.relative_to(package).as_posix() for p in Path(DEFAULT_CHECKPOINT).iterdir())
    assert files == ["checkpoints/g1_bc/config.json", "checkpoints/g1_bc/model.safetensors"]
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)


def test_nested_observations_are_served_like_flat_ones(random_checkpoint):
    """docs/PROTOCOL.md §4: a nested observation (the GR00T modality dict: `video`, `state`, and a
    `language` map that adds no prefix) passes the worker's schema check flattened, and the backend
    answers it exactly as the flat one, instead of failing on the nested keys."""
    from rolloutq.policy_workers.batching import check_schema

    backend = make_backend("visuomotor", checkpoint=str(random_checkpoint))
    backend.load()
    flat = random_obs(np.random.default_rng(3), 2)
    nested = [{"video": {k.split(".", 1)[1]: v for k, v in o.items() if k.startswith("video.")},
               "state": {k.split(".", 1)[1]: v for k, v in o.items() if k.startswith("state.")},
               "language": {real_g1.TEXT_KEY: o[real_g1.TEXT_KEY]}} for o in flat]
    schema = backend.metadata().observation_schema
    assert all(check_schema(o, schema) is None for o in nested)
    for a, b in zip(backend.infer(flat), backend.infer(nested), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
