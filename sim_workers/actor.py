"""The simulator worker as a Ray actor, so `rolloutq eval` can place sims on simulator nodes."""

from __future__ import annotations

import asyncio
from typing import Any

from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings


class SimActor:
    """Wrapped with `ray.remote(...)` by the controller (resources are per-pool settings)."""

    def __init__(self, settings: SimWorkerSettings, metrics_factory: Any = None) -> None:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        sim_id = settings.sim_id or "sim"
        self.worker = SimWorker(settings, metrics=metrics_factory(sim_id) if metrics_factory else None)
        self._stop = asyncio.Event()

    async def run(self) -> dict[str, Any]:
        return await self.worker.run(self._stop)

    async def stop(self) -> None:
        self._stop.set()

    async def release(self) -> None:
        """Scale-down: stop at once and hand unfinished episodes back to the sweep."""
        self._stop.set()
        self.worker.release()

    async def progress(self) -> dict[str, Any]:
        return self.worker.summary()
