"""The daemon thread that keeps the recorders' gauges fresh.

Ray exports a gauge only when it was set since its last report, so a gauge set once vanishes
from Ray's endpoint (seen with Ray 2.60); GPU gauges need sampling anyway. One daemon thread per
process calls `tick(force=True)` on every live recorder every REFRESH_S, which re-sets the `up`
gauges and samples the GPU.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

REFRESH_S = 2.0
_live: weakref.WeakSet = weakref.WeakSet()
_lock = threading.Lock()
_refresher: threading.Thread | None = None


def _refresh_loop() -> None:
    while True:
        time.sleep(REFRESH_S)
        for rec in list(_live):
            try:
                rec.tick(force=True)
            except Exception:  # metrics must never take the process down
                pass


def register(rec: Any) -> None:
    """Refresh `rec` (anything with `tick(force)`) until it is garbage; starts the thread once."""
    global _refresher
    _live.add(rec)
    with _lock:
        if _refresher is None:
            _refresher = threading.Thread(target=_refresh_loop, name="rolloutq-metrics", daemon=True)
            _refresher.start()
