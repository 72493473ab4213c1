"""The policy-pool rule as a Ray Serve custom autoscaling policy."""

from __future__ import annotations

from types import SimpleNamespace

from rolloutq.controller.serve_policy import RolloutqServePolicy


def _ctx(target: int, current: int | None = None, lo: int = 1, hi: int = 4, t: float = 0.0):
    return SimpleNamespace(target_num_replicas=target, current_num_replicas=target if current is None else current,
                           capacity_adjusted_min_replicas=lo, capacity_adjusted_max_replicas=hi, current_time=t)


def test_rule_sizes_from_lambda_mu_and_holds_without_prometheus():
    pol = RolloutqServePolicy(policy="p")
    q = pol.queries
    vals = {q["arrival_rate"]: 300.0, q["service_rate"]: 100.0, q["lag"]: 0.0, q["pending"]: 4.0,
            q["replicas_up"]: 1.0, q["age_s"]: 1.0}
    n, state = pol.decide(vals, _ctx(1))
    assert n == 4 and state["rolloutq_reason"].startswith("up:")  # 300 / (100 × 0.8) = 3.75; bounded by max 4
    n, state = pol.decide(vals, _ctx(2, hi=3))
    assert n == 3  # Serve's capacity-adjusted max
    n, state = pol.decide(None, _ctx(2))
    assert n == 2 and state["rolloutq_held"] and "prometheus" in state["rolloutq_reason"]
    stale = dict(vals, **{q["age_s"]: 120.0})
    n, state = pol.decide(stale, _ctx(3))
    assert n == 3 and "stale" in state["rolloutq_reason"]


def test_serve_accepts_it_as_a_class_policy():
    from ray.serve.config import AutoscalingConfig

    cfg = AutoscalingConfig(min_replicas=1, max_replicas=4, upscale_delay_s=5, downscale_delay_s=30, policy={
        "policy_function": "rolloutq.controller.serve_policy:RolloutqServePolicy",
        "policy_kwargs": {"policy": "p", "prometheus_address": "http://127.0.0.1:9", "target_utilization": 0.8}})
    raw = cfg.policy.get_policy()
    assert raw.__name__ == "RolloutqServePolicy"
    pol = raw(**cfg.policy.policy_kwargs)
    assert pol.prometheus_metrics is None  # nothing listens on port 9: hold
    n, _ = pol(_ctx(2))
    assert n == 2
