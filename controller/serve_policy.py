"""The policy-pool rule as a Ray Serve custom autoscaling policy (Ray ≥ 2.60), for Serve-only users.

Serve calls the policy in its controller every control-loop period with an `AutoscalingContext`;
a class policy is instantiated once with `policy_kwargs`. `PrometheusQueryMixin` (Ray 2.60,
alpha) keeps the PromQL results fresh on a background thread and returns None when Prometheus is
unreachable or its cache is older than `cache_ttl_s`, in which case this policy returns the current
target (hold). Serve itself then applies min/max replicas, `upscale_delay_s`/`downscale_delay_s`
and the scaling factors, so the rule here runs without its own delays or step caps; the ρ target,
hysteresis, backlog drain and staleness check are the same code as `rolloutq controller`.

    from ray import serve
    from rolloutq.policy_workers.serve import PolicyDeployment

    PolicyDeployment.options(autoscaling_config={
        "min_replicas": 1, "max_replicas": 4, "upscale_delay_s": 5, "downscale_delay_s": 30,
        "policy": {"policy_function": "rolloutq.controller.serve_policy:RolloutqServePolicy",
                   "policy_kwargs": {"policy": "default", "prometheus_address": "http://prometheus:9090",
                                     "target_utilization": 0.8}},
    })

Do not combine with `external_scaler_enabled` (Serve refuses both) or with `rolloutq controller`
on the same deployment. The sim pool is not Serve's business: `rolloutq controller --run` sizes it.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.autoscaling_policy import PrometheusQueryMixin
from rolloutq.controller.autoscale import Autoscaler, AutoscaleSettings, Metrics, PolicyPoolSettings, PoolState
from rolloutq.controller.prom import PromQueries


class RolloutqServePolicy(PrometheusQueryMixin):
    def __init__(self, policy: str = "default", target_utilization: float = 0.8, hysteresis: float = 0.1,
                 backlog_drain_s: float = 10.0, scale_to_zero_after_s: float = 0.0, window: str = "20s",
                 capacity_window: str = "2m",
                 stale_after_s: float = 15.0, prometheus_address: str | None = None,
                 fetch_interval_s: float = 2.0, cache_ttl_s: float = 15.0,
                 queries: dict[str, str] | None = None) -> None:
        self.queries = PromQueries(**(queries or {})).render(policy, window, capacity_window)
        super().__init__(prometheus_address=prometheus_address, prometheus_queries=list(self.queries.values()),
                         fetch_interval_s=fetch_interval_s, cache_ttl_s=cache_ttl_s)
        self.settings = AutoscaleSettings(stale_after_s=stale_after_s, policy=PolicyPoolSettings(
            min_replicas=0, max_replicas=1 << 20, target_utilization=target_utilization, hysteresis=hysteresis,
            backlog_drain_s=backlog_drain_s, up_delay_s=0.0, down_delay_s=0.0, max_step_up=1 << 20,
            max_step_down=1 << 20, scale_to_zero_after_s=scale_to_zero_after_s))
        self.autoscaler = Autoscaler(self.settings)

    def decide(self, values: dict[str, float] | None, ctx: Any) -> tuple[int, dict[str, Any]]:
        """`values`: PromQL string -> value (None: Prometheus unavailable)."""
        p = self.settings.policy
        p.min_replicas = int(getattr(ctx, "capacity_adjusted_min_replicas", 0) or 0)
        p.max_replicas = int(getattr(ctx, "capacity_adjusted_max_replicas", 1 << 20) or 1 << 20)
        if p.scale_to_zero_after_s <= 0:
            p.min_replicas = max(1, p.min_replicas)
        if values is None:
            m = Metrics(error="no fresh Prometheus results")
        else:
            m = Metrics(**{name: values.get(q) for name, q in self.queries.items()})
        now = getattr(ctx, "current_time", None) or time.time()
        state = PoolState(int(ctx.target_num_replicas), 0, None, int(ctx.current_num_replicas))
        d = self.autoscaler.decide(m, state, now)
        return d.desired_replicas, {"rolloutq_reason": d.policy_reason, "rolloutq_held": d.held}

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        return self.decide(self.prometheus_metrics, ctx)
