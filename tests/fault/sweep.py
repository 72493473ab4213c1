"""A minimal controller for fault tests: fill a sweep, follow its results, re-queue infrastructure
failures and expired leases (as `rolloutq.controller.follow.follow_sweep` does), riding out Redis restarts. With the
`ResultIntake` that `create_sweep` returns, results are checked as the real controller checks them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rolloutq.broker.connection import connect_async
from rolloutq.broker.settings import RedisSettings
from rolloutq.broker.sweep import EpisodeSpec, SweepQueue
from rolloutq.controller.intake import ResultIntake
from rolloutq.sim_workers.outcomes import RERUN, outcome_of

DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def sweep_config(policy: str = "p", max_steps: int = 40) -> dict[str, Any]:
    return {"policy": policy, "task": "reach", "task_options": {"image_size": 32, "max_steps": max_steps},
            "action_horizon": 8, "shards": 1, "video_episodes": 0}


async def create_sweep(url: str, run: str, episodes: int, lease_s: float = 2.0, max_steps: int = 40) -> ResultIntake:
    """Fill the sweep with specs carrying lease tokens; returns the intake that minted them."""
    intake = ResultIntake(run)
    r = connect_async(RedisSettings(url=url))
    try:
        await SweepQueue(r, run).create(sweep_config(max_steps=max_steps),
                                        [intake.spec(i, 1000 + i) for i in range(episodes)], lease_s)
    finally:
        await r.aclose()
    return intake


async def follow_sweep(url: str, run: str, episodes: int, timeout_s: float, max_attempts: int = 3,
                       tick=None, intake: ResultIntake | None = None) -> dict[str, Any]:
    """Follow until every episode has a final record; returns final records and every record seen.
    With `intake` only the results it takes are seen (`rejected`: its counts); without, every record."""
    r = connect_async(RedisSettings(url=url))
    q = SweepQueue(r, run)
    final: dict[int, dict] = {}
    seen: list[dict] = []
    handed_back = 0
    last_id = b"0-0"
    deadline = time.monotonic() + timeout_s
    try:
        while len(final) < episodes:
            if time.monotonic() > deadline:
                raise AssertionError(f"sweep {run}: {len(final)}/{episodes} episodes after {timeout_s}s")
            try:
                for entry in await q.read_results(last_id, block_ms=200):
                    last_id = entry.entry_id
                    record = intake.accept(entry) if intake is not None else entry.record
                    if record is None:
                        continue
                    seen.append(record)
                    ep = int(record["episode"])
                    if ep in final:
                        continue
                    if outcome_of(record) in RERUN and record["attempt"] < max_attempts:
                        spec = EpisodeSpec(ep, record["seed"], record["attempt"] + 1)
                        if intake is not None:
                            spec = intake.spec(ep, record["seed"], record["attempt"] + 1)
                        await q.requeue(spec)
                        continue
                    final[ep] = record
                handed_back += await q.expire_leases(intake.hand_back if intake is not None else None)
            except DOWN:
                await asyncio.sleep(0.2)
                continue
            if tick is not None:
                await tick(final, seen)
        await q.stop()
    finally:
        await r.aclose()
    return {"final": final, "seen": seen, "handed_back": handed_back,
            "rejected": dict(intake.rejected) if intake is not None else {}}
