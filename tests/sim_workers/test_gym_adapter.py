"""The gymnasium adapter runs real gymnasium environments through Redis and a policy worker:
a MuJoCo env rendering rgb_array frames one env per slot, and a vector env through `run_vector`."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("gymnasium")

from rolloutq.broker.client import PolicyClient  # noqa: E402
from rolloutq.broker.connection import connect_async  # noqa: E402
from rolloutq.broker.errors import ProtocolError  # noqa: E402
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings  # noqa: E402
from rolloutq.policy_workers.base import PolicyBackend, PolicyMetadata  # noqa: E402
from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings  # noqa: E402
from rolloutq.sim_workers.runner import EnvSlot, run_episode  # noqa: E402
from rolloutq.sim_workers.tasks import make_task  # noqa: E402
from rolloutq.sim_workers.vector import EpisodeSpec, run_vector  # noqa: E402

from tests.gifs import played_frames  # noqa: E402


class Recorder(PolicyBackend):
    """Test double: remembers what it was sent and returns a chunk derived from the state."""

    def __init__(self, dim: int = 1, chunk_length: int = 10) -> None:
        self.dim, self.chunk_length = dim, chunk_length
        self.seen: list[dict] = []
        self.batches: list[int] = []

    def load(self) -> None:
        pass

    def metadata(self) -> PolicyMetadata:
        return PolicyMetadata(model_id="recorder", observation_schema={}, action_schema={},
                              chunk_length=self.chunk_length, action_horizon=4,
                              extra={"accepts_any_observation": True})

    def infer(self, batch):
        self.batches.append(len(batch))
        self.seen.extend(batch)
        out = []
        for obs in batch:
            s = float(np.asarray(obs["state.obs"]).reshape(-1)[0])
            out.append({"action": np.full((1, self.chunk_length, self.dim), -0.5 * s, np.float32)})
        return out


class RowsRecorder(Recorder):
    """`Recorder` whose schema leaves the leading dimension open: it takes several rows per request
    (a vectorized simulator's envs) and answers each row from that row's state."""

    def metadata(self) -> PolicyMetadata:
        schema = {"state.obs": {"dtype": "float32", "shape": [-1, 1, 3]},
                  "annotation.human.task_description": {"kind": "text"}}
        return PolicyMetadata(model_id="rows-recorder", observation_schema=schema, action_schema={},
                              chunk_length=self.chunk_length, action_horizon=4)

    def infer(self, batch):
        self.batches.append(sum(o["state.obs"].shape[0] for o in batch))
        self.seen.extend(batch)
        return [{"action": np.repeat(-0.5 * o["state.obs"][:, :, :1], self.chunk_length, axis=1)} for o in batch]


async def _serve(redis_url: str, backend: PolicyBackend, run):
    rs = RedisSettings(url=redis_url)
    ws = PolicyWorkerSettings(redis=rs, worker=WorkerSettings(
        policy="p", batch=BatchSettings(max_batch_size=16, max_wait_ms=20)))
    worker = PolicyWorker(ws, backend=backend)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    r = connect_async(rs)
    client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=30))
    await client.metadata(wait_s=30)
    try:
        return await run(client)
    finally:
        stop.set()
        await task
        await r.aclose()


def test_single_mujoco_env_with_render(redis_url):
    backend = Recorder(dim=1)
    env = make_task("gym", env_id="InvertedPendulum-v5", env_kwargs={"width": 64, "height": 64},
                    render_key="video.ego", instruction="balance the pole", max_steps=12)

    lengths = []
    to_action = env.action_from_chunk
    env.action_from_chunk = lambda chunk, t: (lengths.append(chunk["action"].shape[1]), to_action(chunk, t))[1]

    async def run(client):
        return await run_episode(EnvSlot(env, "g0"), client, episode=0, seed=3, rollout_id="g.e0",
                                 action_horizon=4)

    record = asyncio.run(_serve(redis_url, backend, run))
    env.close()
    assert record.outcome in ("success", "failure"), record.error
    assert record.steps == 12 and record.policy_calls == 3
    assert set(lengths) == {4}  # the runner asked for its 4 steps of each 10-step chunk (PROTOCOL §4.2)
    obs = backend.seen[0]
    assert obs["video.ego"].shape == (1, 1, 64, 64, 3) and obs["video.ego"].dtype == np.uint8
    assert obs["state.obs"].shape == (1, 1, 4) and obs["state.obs"].dtype == np.float32
    assert obs["annotation.human.task_description"] == [["balance the pole"]]


def test_vector_env_keeps_all_envs_in_flight(redis_url):
    backend = Recorder(dim=1)
    from rolloutq.sim_workers.adapters.gym import VectorAdapter

    venv = VectorAdapter(env_id="Pendulum-v1", num_envs=3, max_steps=10)
    specs = [EpisodeSpec(episode=i, seed=100 + i) for i in range(5)]
    lengths = []
    to_action = venv.action_from_chunk
    venv.action_from_chunk = lambda i, chunk, t: (lengths.append(chunk["action"].shape[1]), to_action(i, chunk, t))[1]

    async def run(client):
        return await run_vector(venv, client, specs, action_horizon=4, rollout_prefix="gv")

    records = asyncio.run(_serve(redis_url, backend, run))
    assert set(lengths) == {4}  # 4 steps of each 10-step chunk came back
    assert sorted(r.episode for r in records) == list(range(5))
    assert all(r.outcome in ("success", "failure") and r.steps == 10 and r.policy_calls == 3 for r in records)
    assert max(backend.batches) == 3, backend.batches  # the 3 envs' requests were served as one batch
    # same seed, same start: episode 0 alone in a 1-env vector gives the same return
    solo = VectorAdapter(env_id="Pendulum-v1", num_envs=1, max_steps=10)

    async def run_solo(client):
        return await run_vector(solo, client, [specs[0]], action_horizon=4, rollout_prefix="gs")

    alone = asyncio.run(_serve(redis_url, Recorder(dim=1), run_solo))
    ep0 = next(r for r in records if r.episode == 0)
    assert alone[0].episode_return == pytest.approx(ep0.episode_return, rel=1e-5)


def test_vector_env_asks_for_its_envs_as_rows_and_gets_the_same_episodes(redis_url):
    """With rows_per_request, the envs that ask at once go as requests of several rows (here 2 + 1
    for 3 envs); each env gets its own row back, so the episodes match one request per env."""
    from rolloutq.sim_workers.adapters.gym import VectorAdapter

    specs = [EpisodeSpec(episode=i, seed=200 + i) for i in range(4)]

    def run_with(rows: int, backend: Recorder):
        async def run(client):
            venv = VectorAdapter(env_id="Pendulum-v1", num_envs=3, max_steps=10)
            return await run_vector(venv, client, specs, action_horizon=4, rollout_prefix=f"rw{rows}",
                                    rows_per_request=rows)

        return asyncio.run(_serve(redis_url, backend, run))

    rows_backend = RowsRecorder(dim=1)
    by_rows = {r.episode: r for r in run_with(2, rows_backend)}
    per_env = {r.episode: r for r in run_with(0, RowsRecorder(dim=1))}
    assert sorted(by_rows) == list(range(4)) and all(r.outcome in ("success", "failure") for r in by_rows.values())
    assert max(o["state.obs"].shape[0] for o in rows_backend.seen) == 2  # requests of up to 2 rows
    assert max(rows_backend.batches) == 3  # both requests of a query round in one forward pass
    for ep, r in per_env.items():
        assert by_rows[ep].episode_return == pytest.approx(r.episode_return, rel=1e-5)
        assert by_rows[ep].policy_calls == r.policy_calls == 3

    async def refused(client):
        venv = VectorAdapter(env_id="Pendulum-v1", num_envs=2, max_steps=4)
        with pytest.raises(ProtocolError, match="set rows_per_request to 0"):
            await run_vector(venv, client, specs[:1], action_horizon=4, rows_per_request=2)

    import redis
    from rolloutq.broker.keys import Keys

    redis.Redis.from_url(redis_url).delete(Keys().policy_meta("p"))  # wait for the next worker's own
    asyncio.run(_serve(redis_url, Recorder(dim=1), refused))  # its schema: one row per request


def test_single_env_view_of_a_vector_adapter():
    """`SingleEnvView` turns a 1-env vectorised adapter into a plain SimAdapter (per-slot SimWorker)."""
    from rolloutq.sim_workers.adapters.gym import VectorAdapter
    from rolloutq.sim_workers.vector import SingleEnvView

    env = SingleEnvView(VectorAdapter(env_id="Pendulum-v1", num_envs=1, max_steps=3))
    env.reset(5)
    obs = env.observe()
    assert obs["state.obs"].shape == (1, 1, 3)
    chunk = {"action": np.full((1, 8, 1), 0.25, np.float32)}
    results = [env.step(env.action_from_chunk(chunk, t)) for t in range(3)]
    assert [r.done for r in results] == [False, False, True]
    env.close()


def test_run_vector_takes_episodes_from_an_async_source(redis_url):
    """The leased-sweep shape: an async `take()` feeds free envs, an async `on_episode` records results."""
    from rolloutq.sim_workers.adapters.gym import VectorAdapter

    specs = [EpisodeSpec(episode=i, seed=i) for i in range(4)]
    finished: list[int] = []

    async def take():
        await asyncio.sleep(0)
        return specs.pop(0) if specs else None

    async def on_episode(record):
        await asyncio.sleep(0)
        finished.append(record.episode)

    async def run(client):
        return await run_vector(VectorAdapter(env_id="Pendulum-v1", num_envs=2, max_steps=6), client, take,
                                action_horizon=4, rollout_prefix="ga", on_episode=on_episode)

    records = asyncio.run(_serve(redis_url, Recorder(dim=1), run))
    assert sorted(finished) == [0, 1, 2, 3]
    assert all(r.steps == 6 and r.outcome in ("success", "failure") for r in records)


def test_simulator_error_ends_running_episodes_as_sim_error(redis_url):
    from rolloutq.sim_workers.adapters.gym import VectorAdapter

    class Broken(VectorAdapter):
        def step(self, actions):
            if self._steps[0] >= 2:
                raise RuntimeError("physics exploded")
            return super().step(actions)

    async def run(client):
        return await run_vector(Broken(env_id="Pendulum-v1", num_envs=2, max_steps=6), client,
                                [EpisodeSpec(episode=i, seed=i) for i in range(3)], action_horizon=4)

    records = asyncio.run(_serve(redis_url, Recorder(dim=1), run))
    assert len(records) == 2
    assert all(r.outcome == "sim_error" and r.reason == "sim_raised" and "RuntimeError: physics exploded" in r.error
               for r in records)


def test_policy_errors_end_only_their_env_and_the_vector_run_goes_on(redis_url):
    """Each env whose chunk the worker refuses (NaN: `bad_action`) ends its episode as a policy
    error and takes the next episode; the other envs keep stepping."""
    from rolloutq.sim_workers.adapters.gym import VectorAdapter

    class NanForNegativeSeeds(Recorder):
        def infer(self, batch):
            chunks = super().infer(batch)
            return [{"action": np.full_like(c["action"], np.nan)} if float(o["state.obs"].reshape(-1)[2]) < 0 else c
                    for c, o in zip(chunks, batch, strict=True)]

    async def run(client):
        return await run_vector(VectorAdapter(env_id="Pendulum-v1", num_envs=2, max_steps=6), client,
                                [EpisodeSpec(episode=i, seed=i) for i in range(6)], action_horizon=4)

    records = asyncio.run(_serve(redis_url, NanForNegativeSeeds(dim=1), run))
    assert sorted(r.episode for r in records) == list(range(6))
    errors = [r for r in records if r.outcome == "policy_error"]
    others = [r for r in records if r.outcome != "policy_error"]
    assert errors and others, [(r.episode, r.outcome) for r in records]  # fixed seeds: both kinds occur
    assert all(r.reason == "bad_action" and r.steps in (0, 4) for r in errors)  # ended where it asked
    assert all(r.outcome in ("success", "failure") and r.steps == 6 for r in others)


@pytest.mark.parametrize("rows", [0, 3])
def test_sim_worker_runs_a_sweep_vectorised(redis_url, rows):
    """`SimWorker` with a task whose VectorAdapter is asked for (`vectorized`): one vector env of
    `envs` environments takes the sweep's leased episodes and finishes them; with the task option
    `rows_per_request`, its envs ask in one request of several rows."""
    from rolloutq.broker.keys import Keys
    from rolloutq.broker.sweep import EpisodeSpec as SweepSpec
    from rolloutq.broker.sweep import SweepQueue
    from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings

    backend = RowsRecorder(dim=1) if rows else Recorder(dim=1)

    async def main():
        rs = RedisSettings(url=redis_url)
        ws = PolicyWorkerSettings(redis=rs, worker=WorkerSettings(
            policy="p", batch=BatchSettings(max_batch_size=16, max_wait_ms=20)))
        worker = PolicyWorker(ws, backend=backend)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        r = connect_async(rs)
        queue = SweepQueue(r, "sweep1", Keys(rs.namespace))
        config = {"policy": "p", "task": "gym", "action_horizon": 4,
                  "task_options": {"env_id": "Pendulum-v1", "max_steps": 6, "vectorized": True,
                                   **({"rows_per_request": rows} if rows else {})}}
        await queue.create(config, [SweepSpec(i, 50 + i) for i in range(5)], lease_s=30)
        sim = SimWorker(SimWorkerSettings(run="sweep1", redis=rs, envs=3, exit_when_drained=True))
        summary = await asyncio.wait_for(sim.run(), 60)
        results = await queue.read_results(b"0-0", block_ms=100)
        stop.set()
        await task
        await r.aclose()
        return summary, results

    summary, results = asyncio.run(main())
    assert summary["episodes"] == 5 and summary["steps"] == 30, summary
    assert sorted(rec["episode"] for rec in (e.record for e in results)) == list(range(5))
    assert all(rec["outcome"] in ("success", "failure") and rec["steps"] == 6 for rec in (e.record for e in results))
    assert max(backend.batches) == 3, backend.batches
    assert max(o["state.obs"].shape[0] for o in backend.seen) == (3 if rows else 1)


@pytest.mark.parametrize("renders", [{"render_key": "video.ego"}, {"env_kwargs": {"render_mode": "rgb_array"}}],
                         ids=["render_key", "render_mode"])
def test_a_vectorised_sweep_records_a_video_of_every_step(redis_url, renders):
    """`video_episodes` with a vector env: the first episodes come back with a GIF of the reset and each
    step, played at the env's own rate (InvertedPendulum: 25 fps, 40 ms a frame), whether the frames
    also go to the policy (`render_key`) or the env only renders to images (`render_mode`)."""
    from rolloutq.broker.keys import Keys
    from rolloutq.broker.sweep import EpisodeSpec as SweepSpec
    from rolloutq.broker.sweep import SweepQueue
    from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings

    async def main():
        rs = RedisSettings(url=redis_url)
        worker = PolicyWorker(PolicyWorkerSettings(redis=rs, worker=WorkerSettings(policy="p")), backend=Recorder(1))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        r = connect_async(rs)
        queue = SweepQueue(r, "video1", Keys(rs.namespace))
        options = {"env_id": "InvertedPendulum-v5", "max_steps": 6, "vectorized": True, **renders}
        options["env_kwargs"] = {"width": 48, "height": 48, **options.get("env_kwargs", {})}
        config = {"policy": "p", "task": "gym", "action_horizon": 4, "video_episodes": 2, "task_options": options}
        await queue.create(config, [SweepSpec(i, 70 + i) for i in range(3)], lease_s=30)
        sim = SimWorker(SimWorkerSettings(run="video1", redis=rs, envs=2, exit_when_drained=True))
        await asyncio.wait_for(sim.run(), 120)
        results = await queue.read_results(b"0-0", block_ms=100)
        stop.set()
        await task
        await r.aclose()
        return results

    results = asyncio.run(main())
    videos = {e.record["episode"]: (e.record, e.video) for e in results}
    assert sorted(videos) == [0, 1, 2]
    assert not videos[2][1]  # only the first two episodes are recorded
    for episode in (0, 1):
        record, gif = videos[episode]
        steps = record["steps"]
        assert 1 <= steps <= 6 and gif, record
        frames, delay_ms = played_frames(gif)
        assert (len(frames), delay_ms) == (steps + 1, 40), episode
