"""Actuators: the policy pool's replica count on Ray Serve, and the simulator actors on Ray.

Policy pool: Ray 2.60 Serve applications deployed with `external_scaler_enabled=True` accept a new
target replica count for a deployment from outside (`ServeController.update_deployment_replicas`,
the call behind the dashboard's `POST /api/v1/applications/{app}/deployments/{d}/scale`). That
changes only the count: no redeploy, running replicas keep serving, and a standalone controller
needs neither the deployment's code nor its init arguments. Zero replicas is allowed.

Sim pool: one `SimActor` per simulator. Scale-up starts actors; scale-down releases idle sims
first (no running episode), and busy ones only when told to, which hands their unfinished
episodes straight back to the sweep (`SimActor.release`). Finished actors are killed on `reap`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("rolloutq.autoscale")


class ServePolicyPool:
    def __init__(self, app_name: str = "rolloutq-policy", deployment: str = "PolicyDeployment") -> None:
        self.app_name = app_name
        self.deployment = deployment
        self.target: int | None = None

    def _controller(self) -> Any:
        import ray
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)

    def replica_states(self) -> dict[str, int]:
        from ray import serve

        app = serve.status().applications.get(self.app_name)
        if app is None or self.deployment not in app.deployments:
            raise RuntimeError(f"Serve application {self.app_name!r} with deployment {self.deployment!r} not found")
        return {str(k): int(v) for k, v in app.deployments[self.deployment].replica_states.items()}

    def running(self) -> int:
        return self.replica_states().get("RUNNING", 0)

    def current_target(self) -> int:
        """The count last asked for (or, at start, what runs and starts)."""
        if self.target is None:
            st = self.replica_states()
            self.target = sum(v for k, v in st.items() if k in ("RUNNING", "STARTING", "UPDATING", "RECOVERING"))
        return self.target

    def set(self, n: int) -> None:
        import ray
        from ray.serve._private.common import DeploymentID

        ray.get(self._controller().update_deployment_replicas.remote(
            DeploymentID(name=self.deployment, app_name=self.app_name), int(n)), timeout=30)
        self.target = int(n)


class RaySimPool:
    """Simulator actors of one sweep; `actors` and `runs` are updated in place (eval follows them)."""

    def __init__(self, start_actor: Callable[[str], Any], ray: Any, prefix: str = "sim") -> None:
        self.start_actor = start_actor
        self.ray = ray
        self.prefix = prefix
        self.actors: list[Any] = []
        self.runs: dict[Any, Any] = {}
        self.ids: dict[Any, str] = {}
        self._next = 0
        self._leaving: dict[Any, Any] = {}
        self._started_at: dict[Any, float] = {}
        self._ready: set[Any] = set()
        self.released_episodes = 0
        self.ready_after_s = 60.0
        """A sim that has not started an episode this long after its start counts as ready anyway."""

    @property
    def size(self) -> int:
        return len(self.actors)

    def add(self, n: int) -> list[str]:
        started = []
        for _ in range(n):
            sim_id = f"{self.prefix}{self._next}"
            self._next += 1
            actor = self.start_actor(sim_id)
            self.actors.append(actor)
            self.runs[actor] = actor.run.remote()
            self.ids[actor] = sim_id
            self._started_at[actor] = time.monotonic()
            started.append(sim_id)
        return started

    async def ready(self) -> int:
        """Sims that have taken an episode (new ones stay un-ready until their envs are up)."""
        pending = [a for a in self.actors if a not in self._ready]

        async def check(a: Any) -> None:
            if time.monotonic() - self._started_at.get(a, 0.0) > self.ready_after_s:
                self._ready.add(a)
                return
            try:
                got = await asyncio.wait_for(asyncio.wrap_future(a.progress.remote().future()), 1.0)
            except Exception:
                return
            if got.get("running", 0) or got.get("episodes", 0):
                self._ready.add(a)

        await asyncio.gather(*[check(a) for a in pending])
        return sum(1 for a in self.actors if a in self._ready)

    async def _running(self, actor: Any) -> int:
        try:
            got = await asyncio.wait_for(asyncio.wrap_future(actor.progress.remote().future()), 3.0)
            return int(got.get("running", 0))
        except Exception:
            return 1 << 30  # unknown: treat as busy

    async def remove(self, n: int, allow_busy: bool) -> list[str]:
        """Release up to n sims, idle ones first; busy ones only with `allow_busy`."""
        if n <= 0 or not self.actors:
            return []
        busy = await asyncio.gather(*[self._running(a) for a in self.actors])
        order = sorted(zip(busy, range(len(self.actors)), self.actors, strict=True), key=lambda t: (t[0], -t[1]))
        gone = []
        for running, _, actor in order:
            if len(gone) >= n:
                break
            if running and not allow_busy:
                break
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(actor.release.remote().future())
            self.actors.remove(actor)
            self._leaving[actor] = self.runs.pop(actor)
            gone.append(self.ids.pop(actor))
        return gone

    async def set(self, n: int, allow_busy: bool = False) -> tuple[list[str], list[str]]:
        if n > self.size:
            return self.add(n - self.size), []
        return [], await self.remove(self.size - n, allow_busy)

    def reap(self) -> None:
        """Kill released actors whose run returned (their episodes are back in the sweep)."""
        for actor, ref in list(self._leaving.items()):
            ready, _ = self.ray.wait([ref], timeout=0)
            if ready:
                with contextlib.suppress(Exception):
                    self.released_episodes += int(self.ray.get(ref).get("released", 0))
                with contextlib.suppress(Exception):
                    self.ray.kill(actor)
                del self._leaving[actor]

    def kill_all(self) -> None:
        for a in [*self.actors, *self._leaving]:
            with contextlib.suppress(Exception):
                self.ray.kill(a)
        self.actors.clear()
        self.runs.clear()
        self._leaving.clear()
