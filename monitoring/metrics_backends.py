"""A metric bound to its label values, on prometheus_client or on Ray's metrics.

Both libraries keep one family per metric name per process; `bind` returns the child for one set
of label values, with `inc` / `set` / `observe`, so a recorder binds once at construction and a
hot-path call is a few attribute lookups and a lock per observation. Neither library is imported
until a metric of its backend is bound.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from rolloutq.monitoring.metrics_defs import MetricDef

BACKENDS = ("prometheus", "ray", "off")


class Bound(Protocol):
    def inc(self, v: float = 1.0) -> None: ...
    def set(self, v: float) -> None: ...
    def observe(self, v: float) -> None: ...


_prom_lock = threading.Lock()
_prom_families: dict[str, Any] = {}


def prom_family(d: MetricDef) -> Any:
    """One prometheus_client family per name per process (recorders of several workers share it)."""
    with _prom_lock:
        fam = _prom_families.get(d.name)
        if fam is None:
            import prometheus_client as pc

            if d.kind == "counter":
                # prometheus_client appends _total itself.
                fam = pc.Counter(d.name.removesuffix("_total"), d.help, d.labels)
            elif d.kind == "gauge":
                fam = pc.Gauge(d.name, d.help, d.labels)
            else:
                fam = pc.Histogram(d.name, d.help, d.labels, buckets=d.buckets)
            _prom_families[d.name] = fam
        return fam


_ray_lock = threading.Lock()
_ray_families: dict[str, Any] = {}


class _RayBound:
    __slots__ = ("_m", "_tags", "_kind")

    def __init__(self, metric: Any, tags: dict[str, str], kind: str):
        self._m, self._tags, self._kind = metric, tags, kind

    def inc(self, v: float = 1.0) -> None:
        if v > 0:  # Ray's Counter rejects 0
            self._m.inc(v, tags=self._tags)

    def set(self, v: float) -> None:
        self._m.set(v, tags=self._tags)

    def observe(self, v: float) -> None:
        self._m.observe(v, tags=self._tags)


def _ray_family(d: MetricDef) -> Any:
    with _ray_lock:
        fam = _ray_families.get(d.name)
        if fam is None:
            from ray.util import metrics as rm

            if d.kind == "counter":
                fam = rm.Counter(d.name, d.help, tag_keys=d.labels)
            elif d.kind == "gauge":
                fam = rm.Gauge(d.name, d.help, tag_keys=d.labels)
            else:
                fam = rm.Histogram(d.name, d.help, boundaries=list(d.buckets), tag_keys=d.labels)
            _ray_families[d.name] = fam
        return fam


def bind(backend: str, d: MetricDef, **labels: str) -> Bound:
    """The metric `d` with these label values on `backend` ("prometheus" or "ray")."""
    values = {k: str(labels[k]) for k in d.labels}
    if backend == "prometheus":
        return prom_family(d).labels(**values)
    if backend == "ray":
        return _RayBound(_ray_family(d), values, d.kind)
    raise ValueError(f"metrics backend {backend!r} is not one of {BACKENDS}")
