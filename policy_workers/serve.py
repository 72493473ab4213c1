"""The policy worker as a Ray Serve deployment.

Each replica runs the Redis consumer loop (`rolloutq.policy_workers.loop.PolicyWorker`) on a thread with
its own event loop, so Serve's request handling never competes with batching. HTTP routes:
`GET /stats` (model id, device, parameters, load time, calls, batches, mean batch size, latency
percentiles) and `GET /healthz` (503 once the loop has died); Serve's own health check calls
`check_health`, so a replica whose loop died is replaced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray import serve
from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings

app = FastAPI(title="rolloutq policy replica")
log = logging.getLogger("rolloutq.serve")


@dataclass
class ServeSettings:
    """How the policy pool is deployed on Ray Serve."""

    name: str = "rolloutq-policy"
    replicas: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)
    health_check_timeout_s: float = 300.0
    health_check_period_s: float = 10.0
    env_vars: dict[str, str] = field(default_factory=dict)
    """Passed to replicas through Ray's runtime_env (e.g. HF_TOKEN, MUJOCO_GL)."""
    route_prefix: str = "/policy"
    external_scaler: bool = False
    """Let an outside controller set the replica count (Ray Serve's external scaler API; the
    autoscaler in controller/ uses it). Cannot be combined with Serve's own autoscaling_config."""


@serve.deployment
@serve.ingress(app)
class PolicyDeployment:
    def __init__(self, settings: PolicyWorkerSettings, metrics_factory: Any = None) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        try:
            ctx = serve.get_replica_context()
            replica = getattr(ctx, "replica_tag", None) or str(getattr(ctx, "replica_id", "replica"))
        except Exception:
            replica = "replica"
        if not settings.redis.url:
            # `serve deploy` configs hold no secrets: the URL (with its password) comes from the
            # replica's environment (the node's, or runtime_env.env_vars)
            settings.redis.url = os.environ.get("ROLLOUTQ_REDIS_URL") or None
            if not settings.redis.url:
                raise RuntimeError("no Redis URL: give `redis_url` in the application's args or set "
                                   "ROLLOUTQ_REDIS_URL in the replicas' environment")
        if not settings.worker.worker_id:
            settings.worker.worker_id = replica.replace("#", ".").replace(" ", "")[-60:]
        metrics = metrics_factory(settings.worker.policy, settings.worker.worker_id) if metrics_factory else None
        self.worker = PolicyWorker(settings, metrics=metrics)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rolloutq-consumer", daemon=True)
        self._thread.start()
        self._started.wait(30)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._stop = asyncio.Event()
        self._started.set()
        try:
            self._loop.run_until_complete(self.worker.run(self._stop))
        except Exception as e:
            log.exception("policy consumer loop died: %s", e)
            self.worker.error = self.worker.error or f"{type(e).__name__}: {e}"

    def _alive(self) -> bool:
        return self._thread.is_alive() and self.worker.error is None

    @app.get("/stats")
    def http_stats(self) -> dict[str, Any]:
        return self.stats()

    @app.get("/healthz")
    def http_healthz(self) -> JSONResponse:
        if self._alive():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "dead", "error": self.worker.error}, status_code=503)

    def stats(self) -> dict[str, Any]:
        return self.worker.stats()

    def check_health(self) -> None:
        if not self._alive():
            raise RuntimeError(f"policy consumer loop is not running: {self.worker.error}")

    def __del__(self) -> None:
        if self._loop is not None and self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)


def deploy(worker: PolicyWorkerSettings, serve_settings: ServeSettings, metrics_factory: Any = None) -> Any:
    """Start (or update) the policy deployment on the connected Ray cluster; returns its handle.

    `metrics_factory(policy, worker_id)` builds each replica's metrics recorder (the controller
    passes one that uses Ray's metrics API); None records nothing."""
    return serve.run(_deployment(serve_settings).bind(worker, metrics_factory), name=serve_settings.name,
                     route_prefix=f"{serve_settings.route_prefix}/{worker.worker.policy}",
                     external_scaler_enabled=serve_settings.external_scaler)


_BUILD_ARGS = {"backend", "options", "policy", "namespace", "redis_url", "max_batch_size", "max_wait_ms",
               "shards", "claim_idle_ms", "max_deliveries", "replicas", "num_cpus", "num_gpus", "resources",
               "health_check_timeout_s"}


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for `serve deploy` / `serve run` (import path `rolloutq.policy_workers.serve:build_app`).

    `args` (the application's `args` in a Serve config file): backend, options (backend options),
    policy, namespace, redis_url (leave it out to read ROLLOUTQ_REDIS_URL on the replicas), max_batch_size,
    max_wait_ms, shards, claim_idle_ms, max_deliveries; and defaults for the deployment's replicas,
    num_cpus, num_gpus, resources and health_check_timeout_s, which the config's `deployments:` section
    overrides.
    """
    from rolloutq.broker.settings import BatchSettings, RedisSettings, WorkerSettings

    args = dict(args or {})
    unknown = set(args) - _BUILD_ARGS
    if unknown:
        raise ValueError(f"unknown rolloutq application args {sorted(unknown)}; known: {sorted(_BUILD_ARGS)}")
    worker = PolicyWorkerSettings(
        backend=str(args.get("backend", "cnn")),
        backend_options=dict(args.get("options") or {}),
        redis=RedisSettings(url=args.get("redis_url") or None, namespace=str(args.get("namespace", "rq"))),
        worker=WorkerSettings(
            policy=str(args.get("policy", "default")),
            shards=int(args.get("shards", 1)),
            claim_idle_ms=int(args.get("claim_idle_ms", 60_000)),
            max_deliveries=int(args.get("max_deliveries", 3)),
            batch=BatchSettings(max_batch_size=int(args.get("max_batch_size", 32)),
                                max_wait_ms=float(args.get("max_wait_ms", 5.0))),
        ),
    )
    serve_settings = ServeSettings(
        replicas=int(args.get("replicas", 1)), num_cpus=float(args.get("num_cpus", 1.0)),
        num_gpus=float(args.get("num_gpus", 0.0)), resources=dict(args.get("resources") or {}),
        health_check_timeout_s=float(args.get("health_check_timeout_s", 300.0)),
    )
    return _deployment(serve_settings).bind(worker)


def _deployment(serve_settings: ServeSettings) -> Any:
    actor_options: dict[str, Any] = {"num_cpus": serve_settings.num_cpus, "num_gpus": serve_settings.num_gpus}
    if serve_settings.resources:
        actor_options["resources"] = dict(serve_settings.resources)
    if serve_settings.env_vars:
        actor_options["runtime_env"] = {"env_vars": dict(serve_settings.env_vars)}
    return PolicyDeployment.options(
        num_replicas=serve_settings.replicas,
        ray_actor_options=actor_options,
        health_check_timeout_s=serve_settings.health_check_timeout_s,
        health_check_period_s=serve_settings.health_check_period_s,
        graceful_shutdown_timeout_s=20,
    )
