"""The control loop: read Prometheus, decide (rolloutq.controller.autoscale), act on the pools, record.

Each `step()` logs one JSON line with the decision's inputs and reasons (and appends it to a
decisions file when given) and updates the controller's own metrics, so a dashboard can show
desired vs actual sizes next to the queue and the reason for every change:

  rolloutq_controller_desired_replicas / _actual_replicas / _target_replicas  {policy}
  rolloutq_controller_desired_sims / _actual_sims                              {policy}
  rolloutq_controller_utilization, _needed_replicas, _held (1 while holding)   {policy}
  rolloutq_controller_decisions_total                                          {policy, pool, reason}
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from rolloutq.controller.autoscale import Autoscaler, AutoscaleSettings, Decision, PoolState
from rolloutq.controller.prom import PromClient, PromQueries, read_metrics

log = logging.getLogger("rolloutq.autoscale")


class ControllerMetrics:
    def __init__(self, policy: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.policy = policy
        self.registry = CollectorRegistry()
        g = lambda name, doc: Gauge(f"rolloutq_controller_{name}", doc, ["policy"], registry=self.registry)  # noqa: E731
        self.desired_replicas = g("desired_replicas", "Policy replicas the controller wants.")
        self.actual_replicas = g("actual_replicas", "Policy replicas running (Ray Serve RUNNING).")
        self.target_replicas = g("target_replicas", "Policy replicas last asked of Ray Serve.")
        self.desired_sims = g("desired_sims", "Simulator actors the controller wants.")
        self.actual_sims = g("actual_sims", "Simulator actors alive in the pool.")
        self.utilization = g("utilization", "ρ the controller saw (λ / (replicas × μ)).")
        self.needed = g("needed_replicas", "Fractional replicas needed for ρ under target plus backlog drain.")
        self.held = g("held", "1 while the controller holds sizes because metrics are missing or stale.")
        self.decisions = Counter("rolloutq_controller_decisions", "Decisions by pool and reason.",
                                 ["policy", "pool", "reason"], registry=self.registry)
        self.server: Any = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        from prometheus_client import start_http_server

        self.server, _ = start_http_server(port, addr, registry=self.registry)
        return int(self.server.server_port)

    def record(self, d: Decision, running_replicas: int | None) -> None:
        p = self.policy
        self.desired_replicas.labels(p).set(d.desired_replicas)
        self.target_replicas.labels(p).set(d.desired_replicas)
        if running_replicas is not None:
            self.actual_replicas.labels(p).set(running_replicas)
        self.desired_sims.labels(p).set(d.desired_sims)
        self.held.labels(p).set(1 if d.held else 0)
        if d.utilization is not None:
            self.utilization.labels(p).set(d.utilization)
        if d.needed_replicas is not None:
            self.needed.labels(p).set(d.needed_replicas)
        self.decisions.labels(p, "policy", _kind(d.policy_reason)).inc()
        self.decisions.labels(p, "sims", _kind(d.sim_reason)).inc()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def _kind(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


class Controller:
    """Drives one policy pool and, when a sweep is followed, its simulator pool."""

    def __init__(self, settings: AutoscaleSettings, policy: str, policy_pool: Any, sim_pool: Any = None,
                 sweep: Any = None, queries: PromQueries | None = None, decisions_file: Path | None = None,
                 metrics: ControllerMetrics | None = None, clock: Any = time.monotonic) -> None:
        self.s = settings
        self.policy = policy
        self.prom = PromClient(settings.prometheus_url, settings.prometheus_timeout_s)
        self.queries = queries or PromQueries()
        self.policy_pool = policy_pool
        self.sim_pool = sim_pool
        self.sweep = sweep
        self.autoscaler = Autoscaler(settings)
        self.decisions_file = decisions_file
        self.metrics = metrics or ControllerMetrics(policy)
        self.clock = clock
        self.history: list[dict[str, Any]] = []
        self._t0 = time.time()

    async def step(self) -> Decision:
        loop = asyncio.get_running_loop()
        m = await loop.run_in_executor(None, read_metrics, self.prom, self.policy, self.queries, self.s.window,
                                       self.s.capacity_window)
        left = None
        if self.sweep is not None:
            c = await self.sweep.counts()
            left = c["todo"] + c["running"]
        replicas = await loop.run_in_executor(None, self.policy_pool.current_target)
        sims = self.sim_pool.size if self.sim_pool is not None else 0
        running = None
        try:
            running = await loop.run_in_executor(None, self.policy_pool.running)
        except Exception as e:
            log.warning("could not read the policy pool's replica states: %s", e)
        ready = await self.sim_pool.ready() if self.sim_pool is not None else None
        d = self.autoscaler.decide(m, PoolState(replicas, sims, left, running, ready), self.clock())
        actions: dict[str, Any] = {}
        if d.desired_replicas != replicas:
            try:
                await loop.run_in_executor(None, self.policy_pool.set, d.desired_replicas)
                actions["replicas"] = f"{replicas} -> {d.desired_replicas}"
            except Exception as e:
                actions["replicas_error"] = f"{type(e).__name__}: {e}"
                log.warning("could not scale the policy pool to %d: %s", d.desired_replicas, e)
        if self.sim_pool is not None:
            self.sim_pool.reap()
            if d.desired_sims != sims:
                allow_busy = d.sim_reason.startswith("saturated")
                started, removed = await self.sim_pool.set(d.desired_sims, allow_busy=allow_busy)
                if started:
                    actions["sims_started"] = started
                if removed:
                    actions["sims_removed"] = removed
            self.metrics.actual_sims.labels(self.policy).set(self.sim_pool.size)
        self.metrics.record(d, running)
        rec = {**d.to_dict(), "clock": d.t, "ts": round(time.time(), 3), "t": round(time.time() - self._t0, 3),
               "running_replicas": running, "actions": actions}
        self.history.append(rec)
        line = json.dumps(rec, default=str)
        if actions or d.held:
            log.info("autoscale %s", line)
        else:
            log.debug("autoscale %s", line)
        if self.decisions_file is not None:
            with open(self.decisions_file, "a") as f:
                f.write(line + "\n")
        return d

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                await self.step()
            except Exception as e:  # one bad step must not kill the loop
                log.warning("autoscale step failed: %s: %s", type(e).__name__, e)
            left = self.s.interval_s - (time.monotonic() - t0)
            try:
                await asyncio.wait_for(stop.wait(), max(0.05, left))
            except TimeoutError:
                pass


class EvalAutoscale:
    """What `rolloutq eval --autoscale` holds: controller, sim pool, metrics server, local stack."""

    def __init__(self, controller: Controller, sim_pool: Any, metrics: ControllerMetrics, stack: Any,
                 metrics_port: int | None) -> None:
        self.controller = controller
        self.sim_pool = sim_pool
        self.metrics = metrics
        self.stack = stack
        self.metrics_port = metrics_port

    async def tick(self) -> None:
        try:
            await self.controller.step()
        except Exception as e:  # never let the controller fail the evaluation
            log.warning("autoscale step failed: %s: %s", type(e).__name__, e)

    def summary(self) -> dict[str, Any]:
        h = self.controller.history
        changes = [{"t": x["t"], **x["actions"]} for x in h
                   if any(k in x["actions"] for k in ("replicas", "sims_started", "sims_removed"))]
        return {
            "decisions": len(h),
            "held": sum(1 for x in h if x["held"]),
            "max_replicas_desired": max((x["desired_replicas"] for x in h), default=None),
            "max_sims_desired": max((x["desired_sims"] for x in h), default=None),
            "changes": changes,
            "released_episodes": getattr(self.sim_pool, "released_episodes", 0),
            "decisions_file": str(self.controller.decisions_file) if self.controller.decisions_file else None,
            "prometheus_url": self.controller.s.prometheus_url,
            "metrics_port": self.metrics_port,
        }

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            self.sim_pool.kill_all()
        self.metrics.stop()
        if self.stack is not None:
            self.stack.stop()


async def start_for_eval(s: Any, console: Any, ray: Any, remote: Any, queue: Any) -> EvalAutoscale:
    """Wire the controller into an evaluation (`s` is its EvalSettings)."""
    from rolloutq.controller.localstack import LocalStack
    from rolloutq.controller.pools import RaySimPool, ServePolicyPool
    from rolloutq.sim_workers.worker import SimWorkerSettings

    a = s.autoscale
    a.sims.envs_per_sim = s.envs_per_sim
    metrics = ControllerMetrics(s.policy)
    port = metrics.serve(max(0, a.metrics_port), a.metrics_addr) if a.metrics_port >= 0 else None
    stack = None
    if not a.prometheus_url:
        stack = LocalStack(s.redis.url, s.redis.namespace, exporter_root_hint=a.exporter_root,
                           extra_targets=[f"127.0.0.1:{port}"] if port else [])
        await asyncio.get_running_loop().run_in_executor(None, stack.start)
        a.prometheus_url = stack.prometheus_url
        console.print(f"[dim]autoscale: local exporter + Prometheus on {a.prometheus_url}[/dim]")

    def start(sim_id: str) -> Any:
        return remote.remote(SimWorkerSettings(run=s.run_id, redis=s.redis, client=s.client,
                                               envs=s.envs_per_sim, sim_id=sim_id))

    pool = RaySimPool(start, ray)
    pool.add(s.sims)
    s.out.mkdir(parents=True, exist_ok=True)
    decisions = s.out / "autoscale.jsonl"
    decisions.write_text("")
    controller = Controller(a, s.policy, ServePolicyPool(s.serve.name), pool, queue,
                            decisions_file=decisions, metrics=metrics)
    return EvalAutoscale(controller, pool, metrics, stack, port)
