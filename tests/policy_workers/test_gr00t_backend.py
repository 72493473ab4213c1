"""GR00T backend: key mapping, batching (one get_action per micro-batch), metadata, errors.

`ContractDoubleGr00tPolicy` below is a TEST DOUBLE, not NVIDIA's Gr00tPolicy: it enforces the
documented `get_action` input contract (video (B, T, H, W, 3) uint8, state (B, T, D) float32,
language (B, 1) lists of strings) and returns (B, chunk, D) float32 actions in the layout of the
settings it is built with (REAL_G1 unless `embodiment` says otherwise) whose values encode which
batch row and which instruction they came from, so that stacking and splitting can be checked.
The real network (random weights) is exercised by `test_n17_random_network_one_batched_request`
where Python >= 3.12 and lerobot are present (the GPU machine); it skips elsewhere.
"""

from __future__ import annotations

import importlib.util
import sys
import zlib

import numpy as np
import pytest
from rolloutq.policy_workers.backends import make_backend
from rolloutq.policy_workers.backends._gr00t_layout import LIBERO, REAL_G1
from rolloutq.policy_workers.backends.gr00t import RANDOM_LABEL, Backend
from rolloutq.policy_workers.errors import BackendLoadError, SchemaMismatch

TASK = "pick up the apple and place it on the plate"


class ContractDoubleGr00tPolicy:
    """TEST DOUBLE of Isaac-GR00T's Gr00tPolicy.get_action contract (see module docstring)."""

    def __init__(self, settings=None) -> None:
        self.calls: list[int] = []
        self.layout = settings.spec if settings is not None else REAL_G1

    def get_action(self, observation):
        assert set(observation) == {"video", "state", "language"}
        bs = None
        for key, v in observation["video"].items():
            assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 5 and v.shape[-1] == 3, key
            bs = v.shape[0] if bs is None else bs
            assert v.shape[0] == bs
        for key, v in observation["state"].items():
            assert isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 3, key
            assert v.shape[0] == bs
        (lang,) = observation["language"].values()
        assert isinstance(lang, list) and len(lang) == bs
        assert all(isinstance(r, list) and len(r) == 1 and isinstance(r[0], str) for r in lang)
        self.calls.append(bs)
        # row marker: the first pixel of the first frame, and a hash of the instruction
        assert set(observation["video"]) == set(self.layout.video)
        assert set(observation["state"]) == set(self.layout.state)
        marker = next(iter(observation["video"].values()))[:, 0, 0, 0, 0].astype(np.float32)
        lang_id = np.array([zlib.crc32(r[0].encode()) % 1000 for r in lang], dtype=np.float32)
        out = {}
        for k, d in self.layout.action.items():
            a = np.zeros((bs, self.layout.chunk_length, d), dtype=np.float32)
            a[:, :, 0] = marker[:, None]
            if d > 1:
                a[:, :, 1] = lang_id[:, None]
            out[k] = a
        return out, {}


def flat_obs(marker: int, task: str = TASK) -> dict:
    video = np.zeros((1, 2, 256, 256, 3), dtype=np.uint8)
    video[0, 0, 0, 0, 0] = marker
    obs = {"video.ego_view": video, "annotation.human.task_description": [[task]]}
    for k, shape in REAL_G1.state.items():
        obs[f"state.{k}"] = np.full((1, *shape), marker, dtype=np.float32)
    return obs


def nested_obs(marker: int, task: str = TASK) -> dict:
    flat = flat_obs(marker, task)
    return {
        "video": {"ego_view": flat["video.ego_view"]},
        "state": {k[6:]: v for k, v in flat.items() if k.startswith("state.")},
        "language": {"annotation.human.task_description": [[task]]},
    }


def backend() -> tuple[Backend, ContractDoubleGr00tPolicy]:
    double = ContractDoubleGr00tPolicy()
    b = Backend(policy_factory=lambda s: double, mode="gr00t", model_path="unused")
    b.load()
    return b, double


def test_registry_builds_it():
    b = make_backend("gr00t", mode="n17-random", device="cpu")
    assert isinstance(b, Backend) and b.settings.mode == "n17-random"


@pytest.mark.parametrize("form", [flat_obs, nested_obs])
def test_batch_is_one_get_action_and_splits_in_order(form):
    b, double = backend()
    batch = [form(m) for m in (11, 22, 33, 44)]
    chunks = b.infer(batch)
    assert double.calls == [4]
    assert len(chunks) == 4
    for m, chunk in zip((11, 22, 33, 44), chunks, strict=True):
        assert set(chunk) == {f"action.{k}" for k in REAL_G1.action}
        for k, d in REAL_G1.action.items():
            assert chunk[f"action.{k}"].shape == (1, 40, d) and chunk[f"action.{k}"].dtype == np.float32
        assert chunk["action.left_arm"][0, 0, 0] == m


class LoadingDouble(ContractDoubleGr00tPolicy):
    """The contract double plus the frame-loading hooks the n17-random policy has (TEST DOUBLE):
    frames that are views of shared-memory segments count as registered (there is no CUDA here),
    and `get_action` takes a batch whose frames are left there as `VideoRows` (as the captured
    forward does), copying them out itself."""

    loads_video_rows = True

    def __init__(self) -> None:
        super().__init__()
        self.mapped = None
        self.rows_seen: list[list[tuple[int, int]]] = []

    def frames_loadable(self, frames):
        from rolloutq.policy_workers.backends._mapped_frames import MappedFrames

        if self.mapped is None:  # registering does nothing here: there is no CUDA
            self.mapped = MappedFrames(lambda ptr, size: True, lambda ptr: None)
        return self.mapped.all_registered(frames)

    def get_action(self, observation):
        from rolloutq.policy_workers.backends._gr00t_layout import VideoRows

        video = {}
        for k, v in observation["video"].items():
            if isinstance(v, VideoRows):
                self.rows_seen.append([(first, n) for _, first, n in v.runs])
                v = v.into(np.empty(v.shape, v.dtype))
            video[k] = v
        return super().get_action({**observation, "video": video})


def test_frames_in_shared_memory_reach_a_loading_policy_where_they_are():
    """Frames that are views of shared-memory segments go to a policy that loads frames itself as
    one run per request, not copied into one array; frames from Redis bytes are assembled."""
    from rolloutq.broker.codec import MsgpackNumpyCodec
    from rolloutq.broker.frames import FrameArena, FrameReader

    double = LoadingDouble()
    b = Backend(policy_factory=lambda s: double, mode="gr00t", model_path="unused")
    b.load()
    reader, writer = MsgpackNumpyCodec(frames=FrameReader()), MsgpackNumpyCodec()
    arena = FrameArena()
    try:
        batch = [reader.decode(writer.encode(arena.externalize(f"r{m}", flat_obs(m)))) for m in (5, 6, 7)]
        chunks = b.infer(batch)
        assert [c["action.left_arm"][0, 0, 0] for c in chunks] == [5, 6, 7]
        assert double.rows_seen == [[(0, 1), (0, 1), (0, 1)]] and double.mapped.registered_total == 3
        chunks = b.infer([MsgpackNumpyCodec().decode(writer.encode(flat_obs(m))) for m in (8, 9)])  # via Redis
        assert [c["action.left_arm"][0, 0, 0] for c in chunks] == [8, 9] and len(double.rows_seen) == 1
        # a vectorized simulator's request of two rows: one run of two rows from its segment
        two = {k: (np.concatenate([v, v + 1]) if isinstance(v, np.ndarray) else v * 2) for k, v in flat_obs(3).items()}
        vec = [reader.decode(writer.encode(arena.externalize("v", two))), batch[0]]
        chunks = b.infer(vec)
        assert double.rows_seen[-1] == [(0, 2), (0, 1)]
        assert [c["action.left_arm"].shape[0] for c in chunks] == [2, 1]
        assert list(chunks[0]["action.left_arm"][:, 0, 0]) == [3, 4] and chunks[1]["action.left_arm"][0, 0, 0] == 5
    finally:
        arena.close()


def test_mixed_forms_and_languages_in_one_batch():
    b, double = backend()
    tasks = ["pick up the apple", "open the drawer", "PICK UP THE APPLE!", "wave"]
    batch = [flat_obs(1, tasks[0]), nested_obs(2, tasks[1]), flat_obs(3, tasks[2]), nested_obs(4, tasks[3])]
    chunks = b.infer(batch)
    assert double.calls == [4]
    for i, chunk in enumerate(chunks):
        assert chunk["action.left_arm"][0, 0, 0] == i + 1
        assert chunk["action.left_arm"][0, 0, 1] == zlib.crc32(tasks[i].encode()) % 1000


def test_observation_with_batch_of_two_keeps_its_rows():
    b, double = backend()
    two = flat_obs(7)
    two = {k: (np.concatenate([v, v + 1]) if isinstance(v, np.ndarray) else v * 2) for k, v in two.items()}
    chunks = b.infer([flat_obs(5), two])
    assert double.calls == [3]
    assert chunks[0]["action.waist"].shape == (1, 40, 3)
    assert chunks[1]["action.waist"].shape == (2, 40, 3)
    assert list(chunks[1]["action.waist"][:, 0, 0]) == [7, 8]


def test_language_variants_accepted():
    b, double = backend()
    o1 = flat_obs(1)
    o1["annotation.human.task_description"] = TASK  # bare string
    o2 = nested_obs(2)
    o2["language"] = {"task": [TASK]}  # other key name, (B,) list
    o3 = flat_obs(3)
    o3["annotation.human.task_description"] = np.array([[TASK]])
    b.infer([o1, o2, o3])
    assert double.calls == [3]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: o.pop("state.waist"), "missing state.waist"),
        (
            lambda o: o.__setitem__("video.ego_view", np.zeros((1, 2, 128, 128, 3), np.uint8)),
            "video.ego_view must have shape",
        ),
        (lambda o: o.__setitem__("video.ego_view", np.zeros((1, 2, 256, 256, 3), np.float32)), "must be uint8"),
        (lambda o: o.pop("annotation.human.task_description"), "missing language"),
        (lambda o: o.__setitem__("annotation.human.task_description", [[1]]), "language must be"),
    ],
)
def test_schema_mismatch_says_what_is_wrong(mutate, message):
    b, _ = backend()
    o = flat_obs(1)
    mutate(o)
    with pytest.raises(SchemaMismatch, match=message):
        b.infer([flat_obs(0), o])


def test_float64_state_is_converted():
    b, double = backend()
    o = flat_obs(1)
    o["state.left_arm"] = o["state.left_arm"].astype(np.float64)
    (chunk,) = b.infer([o])  # the double refuses anything but float32 states
    assert double.calls == [1] and chunk["action.left_arm"][0, 0, 0] == 1


def test_metadata_publishes_real_g1_schema():
    b, _ = backend()
    md = b.metadata()
    assert md.observation_schema["video.ego_view"] == {"dtype": "uint8", "shape": [-1, 2, 256, 256, 3]}
    assert md.observation_schema["state.left_wrist_eef_9d"] == {"dtype": "float32", "shape": [-1, 1, 9]}
    assert md.observation_schema["annotation.human.task_description"] == {"kind": "text"}
    assert md.action_schema["action.navigate_command"]["shape"] == [-1, 40, 3]
    assert md.chunk_length == 40 and md.action_horizon == 8
    assert md.extra["embodiment_tag"] == "real_g1_relative_eef_relative_joints"
    assert set(md.extra["modality_config"]) == {"video", "state", "action", "language"}


def test_random_mode_labels_metadata():
    b = Backend(mode="n17-random", device="cpu")
    md = b.metadata()
    assert RANDOM_LABEL in md.description and md.extra["label"] == RANDOM_LABEL
    assert "random" in md.model_id


def test_settings_runtime_env_and_health_check(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    b = Backend(mode="gr00t", model_path="nvidia/GR00T-N1.7-3B", env_vars={"EXTRA": "1"})
    assert b.runtime_env() == {"env_vars": {"HF_TOKEN": "hf_secret", "EXTRA": "1"}}
    assert b.health_check_timeout_s == 300


def test_bad_options_and_mode():
    with pytest.raises(BackendLoadError, match="unknown options"):
        Backend(nonsense=1)
    with pytest.raises(BackendLoadError, match="mode must be"):
        Backend(mode="n15")


@pytest.mark.skipif(importlib.util.find_spec("gr00t") is not None, reason="gr00t is installed here")
def test_missing_gr00t_package_says_how_to_install():
    b = Backend(mode="gr00t", model_path="nvidia/GR00T-N1.7-3B")
    with pytest.raises(BackendLoadError, match="Isaac-GR00T.*pip install"):
        b.load()


def _n17_skip_reason() -> str | None:
    if sys.version_info < (3, 12):
        return "the GR00T N1.7 network needs Python >= 3.12 (LeRobot 0.6); this is " + sys.version.split()[0]
    for mod in ("lerobot", "diffusers", "tree", "transformers", "torch"):
        if importlib.util.find_spec(mod) is None:
            return f"the GR00T N1.7 network needs {mod}; not installed here"
    import torch

    if not torch.cuda.is_available():
        return "a 3.1 B-parameter network in bf16: run on a GPU machine (CUDA not available here)"
    return None


@pytest.mark.skipif(_n17_skip_reason() is not None, reason=str(_n17_skip_reason()))
def test_n17_random_network_one_batched_request():
    import json
    import time

    b = Backend(mode="n17-random", device="cuda")
    b.load()
    b.infer([flat_obs(0)])  # warm-up
    t = time.perf_counter()
    chunks = b.infer([flat_obs(1), nested_obs(2, "open the drawer"), flat_obs(3)])
    ms = (time.perf_counter() - t) * 1e3
    md = b.metadata()
    print("\nGR00T N1.7 random-weight network, one batched request of 3 (flat, nested + other instruction, flat):")
    print(
        json.dumps(
            {
                "model_id": md.model_id,
                "description": md.description,
                "parameters": md.parameters,
                "load_time_s": round(b.load_time_s, 1),
                "infer_ms": round(ms, 1),
                "last_call": {k: round(v, 2) if isinstance(v, float) else v for k, v in b.last_call.items()},
                "chunks": [
                    {
                        k: (list(v.shape), str(v.dtype), [round(float(x), 4) for x in v[0, 0, :3]])
                        if isinstance(v, np.ndarray)
                        else v
                        for k, v in c.items()
                    }
                    for c in chunks
                ],
            },
            indent=1,
        )
    )
    assert len(chunks) == 3
    for chunk in chunks:
        assert chunk["info.note"] == RANDOM_LABEL
        assert chunk["action.left_arm"].shape == (1, 40, 7)
        assert np.isfinite(chunk["action.left_arm"]).all()
    assert b.parameters > 3_000_000_000
    # the vision tower's attention runs all images in one call: it passed its load-time probe
    assert md.extra["vision_attention"] == "batched", md.extra["vision_attention"]


@pytest.mark.skipif(_n17_skip_reason() is not None, reason=str(_n17_skip_reason()))
def test_n17_captured_forward_matches_eager_and_falls_back_outside_its_shapes():
    """The whole forward as CUDA graphs for B in (1, 4), prompts padded to 150 tokens: a batch of 3
    (padded to 4, rows of different prompt lengths) replays the graph and gives the eager model's
    chunks for the same noise seed; a batch of 5 and a prompt past 150 tokens run eagerly."""
    import json

    b = Backend(mode="n17-random", device="cuda", cuda_graph_batch_sizes=(4, 1), cuda_graph_tokens=150)
    b.load()
    report = b.metadata().extra["cuda_graphs"]
    print("\ncapture report:", json.dumps(report))
    assert report["scope"] == "forward", report
    assert report["sizes"] == [1, 4] and report["check"]["ok"]
    p = b.policy
    torch = p.torch

    def chunks(obs: dict, graphs: object) -> tuple[np.ndarray, str]:
        p.graphs = graphs
        torch.manual_seed(11)
        action, info = p.get_action(obs)
        return np.concatenate([action[k] for k in p.spec.action], axis=-1), info["path"]

    from rolloutq.policy_workers.backends._gr00t_layout import check_nested, stack

    def batch(tasks: list[str]) -> dict:
        nested = [nested_obs(i, t) for i, t in enumerate(tasks)]
        for n in nested:
            check_nested(n, p.spec)
        return stack(nested, p.spec)

    graphs = p.graphs
    three = batch(["pick", "pick up the apple and place it on the plate", "open the drawer"])
    for _ in range(2):  # the second replay sees rows left by the first (the padded fourth row too)
        got, path = chunks(three, graphs)
        assert path == "captured forward"
    p.graphs = None
    torch.manual_seed(11)
    with torch.inference_mode():
        want = p.model.get_action(p.prepare(three, pad_to=150))["action_pred"]
    want = want[:, :40, : p.action_dim].float().cpu().numpy()
    err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    print("captured vs eager, B=3 padded to 4:", err)
    assert got.shape == (3, 40, p.action_dim) and np.isfinite(got).all()
    assert err < 0.02
    _, path = chunks(batch(["pick"] * 5), graphs)
    assert path == "eager"  # larger than the largest captured size
    _, path = chunks(batch(["pick up " * 12]), graphs)
    assert path == "eager"  # a prompt wider than the captured 150 tokens
    p.graphs = graphs
    assert len(b.infer([flat_obs(0), flat_obs(1)])) == 2  # the backend's own path: 2 requests, padded to 4
    assert b.last_call["path"] == "captured forward"

    # frames in shared-memory segments, registered with CUDA: loaded by the graph from where they
    # are, and the same chunks as the same observations with their frames copied out
    from rolloutq.broker.codec import MsgpackNumpyCodec
    from rolloutq.broker.frames import FrameArena, FrameReader

    reader, writer = MsgpackNumpyCodec(frames=FrameReader()), MsgpackNumpyCodec()
    arena = FrameArena()
    raw = [flat_obs(m, t) for m, t in ((7, "pick"), (8, "open the drawer"), (9, "wave"))]

    def same_as_copied(observations: list) -> tuple[list, str, int]:
        """Chunks of `observations` (frames in segments) equal those of the same observations with
        their frames copied out; returns them with the first call's path and batch."""
        torch.manual_seed(9)
        got = b.infer(observations)
        path, rows = b.last_call["path"], b.last_call["batch"]
        copied = [{k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in o.items()} for o in observations]
        torch.manual_seed(9)
        want = b.infer(copied)
        for g, w in zip(got, want, strict=True):
            for k in w:
                if k != "info.note":
                    assert np.array_equal(g[k], w[k]), k
        return got, path, rows

    try:
        shm = [reader.decode(writer.encode(arena.externalize(f"s{i}", o))) for i, o in enumerate(raw)]
        _, path, _ = same_as_copied(shm)
        assert path == "captured forward" and p.mapped.registered_total >= 3
        # a request of two rows (a vectorized simulator) beside one of one row: 3 rows, padded to 4
        two = {k: (np.concatenate([v, v[::-1]]) if isinstance(v, np.ndarray) else v * 2) for k, v in raw[1].items()}
        got, path, rows = same_as_copied([reader.decode(writer.encode(arena.externalize("v2", two))), shm[2]])
        assert path == "captured forward" and rows == 3
        assert [g["action.waist"].shape[0] for g in got] == [2, 1]
    finally:
        arena.close()


def test_cuda_graph_scope_is_checked():
    with pytest.raises(BackendLoadError, match="cuda_graph_scope"):
        Backend(mode="n17-random", device="cpu", cuda_graph_scope="everything")


def test_policy_factory_path_and_warmup_sizes():
    b = Backend(
        policy_factory="tests.policy_workers.test_gr00t_backend:ContractDoubleGr00tPolicy",
        mode="gr00t",
        model_path="x",
        warmup_batch_sizes=(1, 3),
    )
    b.load()
    assert b.policy.calls == [1, 3]
    assert "label" not in b.metadata().extra


def test_stack_fills_the_policys_reused_batch_buffer():
    from rolloutq.policy_workers.backends._gr00t_layout import check_nested, stack

    handed: list[np.ndarray] = []

    def batch_buffer(key: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        assert key == "ego_view"
        handed.append(np.full(shape, 7, dtype))
        return handed[-1]

    nested = [nested_obs(i) for i in range(3)]
    for n in nested:
        check_nested(n, REAL_G1)
    out = stack(nested, REAL_G1, batch_buffer=batch_buffer)
    video = out["video"]["ego_view"]
    assert len(handed) == 1 and np.shares_memory(video, handed[0])
    for i, n in enumerate(nested):
        np.testing.assert_array_equal(video[i], n["video"]["ego_view"][0])
    assert stack(nested[:1], REAL_G1, batch_buffer=batch_buffer)["video"]["ego_view"] is nested[0]["video"]["ego_view"]
    assert len(handed) == 1  # one request: its own frames, no copy


def test_stack_copies_a_large_batch_in_parallel_exactly():
    from rolloutq.policy_workers.backends import _gr00t_layout as layout

    parts = [np.random.default_rng(i).integers(0, 255, (1, 2, 256, 256, 3), dtype=np.uint8) for i in range(12)]
    parts[3] = parts[3][:, ::-1]  # a non-contiguous view too
    out = np.empty((12, 2, 256, 256, 3), np.uint8)
    assert out.nbytes >= layout.PARALLEL_COPY_BYTES
    assert layout._copy_rows(parts, out) is out
    np.testing.assert_array_equal(out, np.concatenate(parts, 0))


# --- the LIBERO layout (embodiment="libero") ------------------------------------------------------


def libero_obs(markers: list[int], task: str = "put the bowl on the plate") -> dict:
    """One request of len(markers) rows in the libero task's wire schema (its schema module's keys)."""
    n = len(markers)
    obs: dict = {}
    for key in ("video.agentview", "video.wrist"):
        video = np.zeros((n, 1, 256, 256, 3), dtype=np.uint8)
        video[:, 0, 0, 0, 0] = markers
        obs[key] = video
    dims = {"state.eef_pos": 3, "state.eef_axis_angle": 3, "state.gripper_qpos": 2, "state.joint_pos": 7}
    for key, d in dims.items():
        obs[key] = np.tile(np.asarray(markers, np.float32)[:, None, None], (1, 1, d))
    obs["annotation.human.task_description"] = [[task]] * n
    return obs


def libero_backend() -> Backend:
    b = Backend(policy_factory=lambda s: ContractDoubleGr00tPolicy(s), embodiment="libero")
    b.load()
    return b


def test_libero_rows_come_back_as_7d_action_chunks():
    """A LIBERO request of two rows (a vectorised simulator's envs) beside a one-row request: one
    get_action of three rows, `action` chunks of 7-D steps back in each request's rows."""
    b = libero_backend()
    chunks = b.infer([libero_obs([21, 22]), libero_obs([23], "open the drawer")])
    assert b.policy.calls == [3]
    assert [sorted(c) for c in chunks] == [["action"], ["action"]]
    assert chunks[0]["action"].shape == (2, 16, 7) and chunks[1]["action"].shape == (1, 16, 7)
    assert chunks[0]["action"].dtype == np.float32
    assert list(chunks[0]["action"][:, 0, 0]) == [21, 22] and chunks[1]["action"][0, 0, 0] == 23
    assert chunks[1]["action"][0, 0, 1] == zlib.crc32(b"open the drawer") % 1000


@pytest.mark.parametrize(
    "obs, message",
    [
        (flat_obs(1), "missing video.agentview"),  # a REAL_G1 observation
        ({k: v for k, v in libero_obs([1, 2]).items() if k != "video.wrist"}, "missing video.wrist"),
        ({**libero_obs([1]), "state.joint_pos": np.zeros((1, 1, 6), np.float32)},
         r"state.joint_pos must have shape \(B, 1, 7\)"),
        ({**libero_obs([1, 2]), "state.eef_pos": np.zeros((3, 1, 3), np.float32)}, "batch size 3"),
    ],
)
def test_libero_wrong_observation_is_a_schema_error(obs, message):
    b = libero_backend()
    with pytest.raises(SchemaMismatch, match=message):
        b.infer([libero_obs([0]), obs])
    assert b.policy.calls == []


def test_libero_schema_is_what_the_libero_task_sends():
    """The published schema has the libero task's keys (its schema module) with the same shapes, the
    leading dimension open for rows; actions `action` (rows, 16, 7); the options it took."""
    from rolloutq.sim_workers.tasks.libero import schema as task

    md = Backend(mode="n17-random", device="cpu", embodiment="libero").metadata()
    sent = task.observation_schema()
    assert set(md.observation_schema) == set(sent)
    for key, spec in md.observation_schema.items():
        want = sent[key]
        assert spec.get("kind") == want.get("kind") and spec.get("dtype") == want.get("dtype"), key
        if "shape" in want:
            assert spec["shape"] == [-1, *want["shape"][1:]], key
    assert md.action_schema == {task.ACTION_KEY: {"dtype": "float32", "shape": [-1, 16, 7]}}
    assert md.chunk_length == 16 and set(LIBERO.action) == {task.ACTION_KEY}
    assert md.extra["embodiment"] == "libero" and md.extra["embodiment_tag"] == "new_embodiment"
    assert md.extra["label"] == RANDOM_LABEL and RANDOM_LABEL in md.description and "libero" in md.description


def test_preflight_passes_libero_with_the_libero_layout_only():
    """`--task libero --backend gr00t`: the pre-flight schema check refuses the default REAL_G1 layout and
    passes `embodiment=libero`."""
    import rolloutq.sim_workers.tasks.libero.adapter as adapter
    from rolloutq.controller.preflight import Plan, preflight

    def check(**options):
        return preflight(Plan(backend="gr00t", backend_options=options, task="libero"), redis_required=False,
                         engines=False)

    assert any("does not send" in p for p in check(mode="n17-random"))
    assert "video.wrist" in adapter.observation_schema()
    assert check(mode="n17-random", embodiment="libero") == []
    assert check(mode="gr00t", model_path="nvidia/GR00T-N1.7-3B", embodiment="libero") == []


def test_embodiment_option_is_checked_and_sets_the_defaults():
    with pytest.raises(BackendLoadError, match="embodiment must be one of 'real_g1', 'libero'"):
        Backend(embodiment="panda")
    b = Backend(embodiment="LIBERO", embodiment_tag="REAL_G1", action_prefix="act/")
    assert b.settings.embodiment == "libero" and b.spec == LIBERO
    md = b.metadata()
    assert md.extra["embodiment_tag"] == "real_g1_relative_eef_relative_joints"
    assert list(md.action_schema) == ["act/action"]
    assert Backend().settings.action_prefix == "action." and Backend().spec == REAL_G1


def test_a_labelled_stand_in_is_named_in_the_metadata():
    """The LIBERO benchmark's timing double behind the backend: the metadata says what it is."""
    b = Backend(policy_factory="benchmarks.libero_policy:SleepPolicy", embodiment="libero", device="cpu")
    b.load()
    md = b.metadata()
    assert md.extra["label"] == b.policy.label and md.description.startswith(b.policy.label)
    (chunk,) = b.infer([libero_obs([1, 2])])
    assert chunk["action"].shape == (2, 16, 7) and "info.note" not in chunk


@pytest.mark.skipif(_n17_skip_reason() is not None, reason=str(_n17_skip_reason()))
def test_n17_random_network_in_the_libero_layout():
    b = Backend(mode="n17-random", device="cuda", embodiment="libero")
    b.load()
    chunks = b.infer([libero_obs([1, 2]), libero_obs([3], "open the drawer")])
    assert [c["action"].shape for c in chunks] == [(2, 16, 7), (1, 16, 7)]
    assert all(np.isfinite(c["action"]).all() and c["info.note"] == RANDOM_LABEL for c in chunks)
