"""The sweep queue's scripts against a real redis-server whose script cache empties under them."""

from __future__ import annotations

import asyncio

from broker.connection import connect_async
from broker.settings import RedisSettings
from broker.sweep import EpisodeSpec, SweepQueue


def test_scripts_survive_a_cache_emptied_again_after_redis_py_reloads_them(redis_url):
    """A Redis restart empties the script cache; redis-py reloads a script and retries once. If the
    server restarts again between that reload and that retry (SCRIPT FLUSH stands in for the
    restart here), the queue loads and retries once more instead of failing the simulator."""

    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        q = SweepQueue(r, "flush")
        await q.create({"policy": "p"}, [EpisodeSpec(i, 10 + i) for i in range(2)], lease_s=30)
        load, flushed = r.script_load, []

        async def load_then_flush(script):
            sha = await load(script)
            if len(flushed) < 2:  # the first two reloads are lost, as across two restarts
                flushed.append(sha)
                await r.script_flush()
            return sha

        r.script_load = load_then_flush
        await r.script_flush()
        spec = await q.take("sim", 30_000)
        assert spec is not None and spec.episode == 0 and len(flushed) == 2
        await r.script_flush()
        await q.finish(spec.episode, {"status": "ok"})
        assert (await q.counts()) == {"todo": 1, "running": 0}
        await r.aclose()

    asyncio.run(main())
