"""A scaled-down sim hands its unfinished episodes back at once, under a new rollout generation."""

from __future__ import annotations

import asyncio

from rolloutq.broker.connection import connect_async
from rolloutq.broker.settings import RedisSettings
from rolloutq.broker.sweep import EpisodeSpec, SweepQueue


def test_release_returns_only_own_leases_with_bumped_generation(redis_url):
    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        q = SweepQueue(r, "rel")
        await q.create({"policy": "p"}, [EpisodeSpec(i, 100 + i) for i in range(3)], lease_s=30)
        a = await q.take("simA", 30_000)
        b = await q.take("simB", 30_000)
        assert (await q.counts()) == {"todo": 1, "running": 2}
        # simA may not release simB's episode
        assert await q.release("simA", [a.episode, b.episode]) == 1
        assert (await q.counts()) == {"todo": 2, "running": 1}
        again = await q.take("simC", 30_000)
        assert (again.episode, again.seed, again.attempt, again.gen) == (a.episode, a.seed, 1, 1)
        await r.aclose()

    asyncio.run(main())
