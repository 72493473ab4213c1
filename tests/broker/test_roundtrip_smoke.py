import asyncio

import numpy as np

from broker.client import PolicyClient
from broker.connection import connect_async
from broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
from policy_workers.loop import PolicyWorker, PolicyWorkerSettings


def test_smoke(redis_url):
    async def main():
        rs = RedisSettings(url=redis_url)
        ws = PolicyWorkerSettings(backend="null", redis=rs,
                                  worker=WorkerSettings(policy="p", batch=BatchSettings(max_batch_size=8, max_wait_ms=2)))
        worker = PolicyWorker(ws)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        r = connect_async(rs)
        client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
        meta = await client.metadata(wait_s=10)
        assert meta["model_id"] == "null"
        obs = {"x": np.ones((1, 3), np.float32)}
        res = await asyncio.gather(*[client.act(f"r{i}", obs) for i in range(16)])
        assert all(x.chunk["action"].shape == (1, 40, 7) for x in res)
        print([x.batch for x in res], [round(x.round_trip_ms, 2) for x in res])
        stop.set()
        await task
        await r.aclose()

    asyncio.run(main())
