"""What a simulator (one process or actor) records: env steps, round trips, episodes by outcome.

`rolloutq.sim_workers.worker` calls `on_round_trip`, `on_steps` and `on_episode`; the refresher
thread (`metrics_refresh`) calls `tick`, which keeps `rolloutq_sim_up` set. Build a recorder with
`rolloutq.monitoring.metrics.sim_metrics`.
"""

from __future__ import annotations

import time

from rolloutq.monitoring.metrics_backends import bind, prom_family
from rolloutq.monitoring.metrics_defs import (
    EPISODE_OUTCOMES,
    SIM_ENV_STEPS,
    SIM_EPISODES,
    SIM_INFRA_FAILURES,
    SIM_METRICS,
    SIM_OUTCOMES,
    SIM_ROUND_TRIP,
    SIM_SUCCESSES,
    SIM_UP,
    UNSCORED_OUTCOMES,
)
from rolloutq.monitoring.metrics_refresh import register


class SimMetrics:
    """What one simulator process or actor records. Build with `sim_metrics(...)`."""

    def __init__(self, sim: str, policy: str = "", backend: str = "prometheus"):
        self.sim, self.policy, self.backend = sim, policy, backend
        self._closed = False
        self._last_tick = time.monotonic()
        self._bind_all()
        register(self)

    def _bind_all(self) -> None:
        lab = {"policy": self.policy, "sim": self.sim}
        b = self.backend
        self._steps = bind(b, SIM_ENV_STEPS, **lab)
        self._rtt = bind(b, SIM_ROUND_TRIP, **lab)
        self._episodes = bind(b, SIM_EPISODES, **lab)
        self._successes = bind(b, SIM_SUCCESSES, **lab)
        self._infra = bind(b, SIM_INFRA_FAILURES, **lab)
        self._outcomes = {o: bind(b, SIM_OUTCOMES, outcome=o, **lab) for o in EPISODE_OUTCOMES}
        self._up = bind(b, SIM_UP, **lab)
        self._up.set(1)

    def set_policy(self, policy: str) -> None:
        """Relabel with the policy once it is known (a simulator learns it from the sweep's
        config, after it started). The old label set is dropped (prometheus_client) or marked
        down (Ray, which cannot drop series)."""
        if policy == self.policy:
            return
        old = self.policy
        if self.backend == "prometheus":
            for d in SIM_METRICS:
                for values in ([(old, self.sim, o) for o in EPISODE_OUTCOMES] if "outcome" in d.labels
                               else [(old, self.sim)]):
                    try:
                        prom_family(d).remove(*values)
                    except KeyError:
                        pass
        else:
            self._up.set(0)
        self.policy = policy
        self._bind_all()

    def observe_round_trip(self, s: float) -> None:
        """One policy query: seconds from sending the observation to having the action chunk."""
        self._rtt.observe(s)

    def env_steps(self, n: int = 1) -> None:
        """`n` environment steps executed (count each env of a vectorised env)."""
        self._steps.inc(n)

    def episode(self, outcome: str) -> None:
        """One episode finished with `outcome` (rolloutq.sim_workers.outcomes). Only `success` counts as a
        success; `sim_error` and `infra` (not scored) also count in `rolloutq_sim_infra_failures_total`."""
        if outcome not in self._outcomes:
            outcome = "infra"  # unknown: never scored
        self._episodes.inc(1)
        self._outcomes[outcome].inc(1)
        if outcome in UNSCORED_OUTCOMES:
            self._infra.inc(1)
        elif outcome == "success":
            self._successes.inc(1)

    # rolloutq.sim_workers.worker.SimMetrics: pass a SimMetrics as the sim worker's `metrics`.
    def on_round_trip(self, seconds: float) -> None:
        self.observe_round_trip(seconds)

    def on_steps(self, n: int) -> None:
        self.env_steps(n)

    def on_episode(self, outcome: str) -> None:
        self.episode(outcome)

    def tick(self, force: bool = False) -> None:
        """Refresh `rolloutq_sim_up`. A background thread does it every REFRESH_S; calling it
        yourself is optional (at most once a second unless forced)."""
        now = time.monotonic()
        if not force and now - self._last_tick < 1.0:
            return
        self._last_tick = now
        self._up.set(0 if self._closed else 1)

    def close(self) -> None:
        self._closed = True
        self._up.set(0)


class NullSimMetrics(SimMetrics):
    """Metrics off: every method is a no-op."""

    def __init__(self, sim: str = "", policy: str = "", backend: str = "off"):
        self.sim, self.policy, self.backend = sim, policy, "off"

    def observe_round_trip(self, s: float) -> None:
        pass

    def env_steps(self, n: int = 1) -> None:
        pass

    def episode(self, outcome: str) -> None:
        pass

    def set_policy(self, policy: str) -> None:
        self.policy = policy

    def tick(self, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass
