"""A policy worker: load a backend, publish its metadata, and serve it from Redis.

Used as-is by `rolloutq policy-worker` (plain process, e.g. under compose) and inside the Ray
Serve replica (`rolloutq.policy_workers.serve`), where it runs on a thread of its own.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rolloutq.broker import PROTOCOL_VERSION
from rolloutq.broker.connection import REDIS_DOWN, connect_async
from rolloutq.broker.consumer import ConsumerMetrics, StreamConsumer
from rolloutq.broker.handler import BatchHandler
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import RedisSettings, WorkerSettings
from rolloutq.policy_workers.backends import make_backend
from rolloutq.policy_workers.base import PolicyBackend, PolicyMetadata
from rolloutq.policy_workers.batching import SchemaChecker

log = logging.getLogger("rolloutq.policy")


@dataclass
class PolicyWorkerSettings:
    """Everything a policy worker needs; built at the CLI (or deployment) edge."""

    backend: str = "cnn"
    backend_options: dict[str, Any] = field(default_factory=dict)
    redis: RedisSettings = field(default_factory=RedisSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)


class _Handler(BatchHandler):
    """Binds a backend to the consumer: schema check against its metadata, batched inference."""

    def __init__(self, backend: PolicyBackend, meta: PolicyMetadata) -> None:
        self.backend = backend
        self.inline = bool(getattr(backend, "runs_inline", False))
        self.schema = meta.observation_schema
        self.any_obs = bool(meta.extra.get("accepts_any_observation")) or not self.schema
        self.check = SchemaChecker(self.schema)

    def validate(self, obs: Any) -> str | None:
        if self.any_obs:
            return None if isinstance(obs, dict) else "observation must be a map of named arrays"
        return self.check(obs)

    def rows(self, obs: Any) -> int:
        """Rows (rollouts) in a request: the leading dimension where the schema leaves it open."""
        return 1 if self.any_obs else self.check.rows(obs)

    def infer(self, batch: list[Any]) -> list[Any]:
        return self.backend.infer(batch)


class PolicyWorker:
    def __init__(self, settings: PolicyWorkerSettings, metrics: ConsumerMetrics | None = None,
                 backend: PolicyBackend | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.backend = backend or make_backend(settings.backend, **settings.backend_options)
        self.keys = Keys(settings.redis.namespace)
        self.consumer: StreamConsumer | None = None
        self.meta: PolicyMetadata | None = None
        self.load_time_s = 0.0
        self.error: str | None = None

    async def publish_metadata(self, r: Any) -> None:
        assert self.meta is not None
        s = self.settings.worker
        await r.hset(self.keys.policy_meta(s.policy), mapping={
            "metadata": json.dumps(self.meta.to_dict()),
            "protocol": str(PROTOCOL_VERSION),
            "shards": str(s.shards),
            "updated": f"{time.time():.3f}",
        })
        await r.sadd(self.keys.policies(), s.policy)

    def _load(self) -> None:
        self.backend.load()
        # Take the loaded model (~390 k objects for the GR00T N1.7 network) out of the cyclic garbage
        # collector's reach: a full collection over it takes ~80-100 ms, a stall every request would wait out.
        gc.collect()
        gc.freeze()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await loop.run_in_executor(None, self._load)
        self.load_time_s = time.perf_counter() - t0
        self.meta = self.backend.metadata()
        self.meta.extra.setdefault("load_time_s", round(self.load_time_s, 3))
        r = connect_async(self.settings.redis)
        try:
            self.consumer = StreamConsumer(r, _Handler(self.backend, self.meta), self.settings.worker,
                                           self.keys, metrics=self.metrics)
            await self.consumer.retrying(lambda: self.publish_metadata(r), stop)
            log.info("policy %s: worker %s serving %s (loaded in %.2fs)", self.settings.worker.policy,
                     self.consumer.worker_id, self.meta.model_id, self.load_time_s)
            await self.consumer.run(stop)
        except REDIS_DOWN as e:
            if not stop.is_set():
                self.error = f"{type(e).__name__}: {e}"
                raise
            log.info("policy %s: stopped before Redis could be reached (%s)", self.settings.worker.policy, e)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            raise
        finally:
            await r.aclose()

    def stats(self) -> dict[str, Any]:
        snap = self.consumer.stats.snapshot() if self.consumer else {}
        meta = self.meta
        return {
            "policy": self.settings.worker.policy,
            "model_id": meta.model_id if meta else None,
            "device": meta.device if meta else None,
            "parameters": meta.parameters if meta else None,
            "load_time_s": round(self.load_time_s, 3),
            "total_calls": snap.get("served_total", 0),
            "batches": snap.get("batches_total", 0),
            "mean_batch_size": snap.get("mean_batch_size", 0.0),
            "latency_ms": snap.get("infer_ms", {}),
            "queue_ms": snap.get("queue_ms", {}),
            "errors": snap.get("errors_total", {}),
            "worker": snap.get("worker"),
            "error": self.error,
        }
