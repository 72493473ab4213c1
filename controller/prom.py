"""Reading the controller's inputs from Prometheus over its HTTP API (instant PromQL queries).

Every expression the controller depends on lives in `PromQueries`, so a renamed metric or a
different recording rule is a one-line change. The defaults read the `rolloutq exporter`'s
queue metrics (monitoring/exporter.py): the entries-added counter for λ (a short `rate` window,
because the recording rule's 1m window reacts too slowly to scale on); for μ the highest value of
the exporter's per-replica service-rate gauge over `capacity_window` (the exporter's μ is the rate
at the *current* batch size: with a batch cost that hardly grows with the batch, a lightly loaded
replica shows a small μ although it would serve far more at full batches, and sizing on it would
add replicas that each run ever smaller batches; the best rate seen recently, when batches were
full, is the batched capacity); lag and pending summed over shards; and the exporter's last-poll
timestamp for staleness. Any failure (unreachable, HTTP error, bad JSON, empty result) leaves
the field None, and the autoscaler then holds.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from rolloutq.controller.autoscale import Metrics


@dataclass(frozen=True)
class PromQueries:
    """PromQL per input; `{policy}` and `{window}` are filled in. Change metric names here."""

    arrival_rate: str = 'sum(rate(rolloutq_queue_entries_added_total{{policy="{policy}"}}[{window}]))'
    service_rate: str = ('max(max_over_time(rolloutq_policy_service_rate_per_replica{{policy="{policy}"}}'
                         '[{capacity_window}]))')
    lag: str = 'sum(rolloutq_queue_lag{{policy="{policy}"}})'
    pending: str = 'sum(rolloutq_queue_pending{{policy="{policy}"}})'
    replicas_up: str = 'max(rolloutq_policy_replicas_up{{policy="{policy}"}})'
    age_s: str = "time() - max(rolloutq_exporter_last_poll_timestamp_seconds)"

    def render(self, policy: str, window: str, capacity_window: str = "2m") -> dict[str, str]:
        names = ("arrival_rate", "service_rate", "lag", "pending", "replicas_up", "age_s")
        return {n: getattr(self, n).format(policy=policy, window=window, capacity_window=capacity_window)
                for n in names}


class PromUnavailable(Exception):
    pass


class PromClient:
    """Instant queries against `{url}/api/v1/query`."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """Samples of an instant query as (labels, value); scalars come back as one sample."""
        q = urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise PromUnavailable(f"{type(e).__name__}: {e}") from None
        if body.get("status") != "success":
            raise PromUnavailable(f"query failed: {body.get('error', body)}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(s.get("metric", {}), float(s["value"][1])) for s in data["result"]]

    def scalar(self, expr: str) -> float | None:
        """First sample's value, or None when the result is empty or not a number."""
        got = self.query(expr)
        if not got:
            return None
        v = got[0][1]
        return None if v != v or v in (float("inf"), float("-inf")) else v


def read_metrics(client: PromClient, policy: str, queries: PromQueries | None = None,
                 window: str = "20s", capacity_window: str = "2m") -> Metrics:
    """One `Metrics` for a policy; `error` is set when Prometheus did not answer."""
    m = Metrics()
    try:
        for name, expr in (queries or PromQueries()).render(policy, window, capacity_window).items():
            setattr(m, name, client.scalar(expr))
    except PromUnavailable as e:
        return Metrics(error=str(e))
    return m


def wait_ready(url: str, timeout_s: float = 30.0) -> bool:
    """Poll Prometheus's readiness endpoint (tests, CLI start-up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/-/ready", timeout=1.0) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False
