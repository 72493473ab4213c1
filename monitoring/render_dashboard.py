"""Render the main panels of the Grafana dashboard to a PNG, from a real Prometheus.

Grafana cannot be installed on the machines this project is built on, so this is how the
dashboard's content gets looked at: every target expression of every panel is sent to
Prometheus's range-query API (Grafana variables substituted: `$policy` -> `.*`,
`$__rate_interval` -> `1m`) and drawn with matplotlib in the dashboard's panel order.

    python -m rolloutq.monitoring.render_dashboard --prometheus http://127.0.0.1:9090 --out dashboard.png
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).parent / "grafana" / "dashboards" / "rolloutq.json"
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__interval": "15s", "$policy": ".*"}


def substitute(expr: str, extra: dict[str, str] | None = None) -> str:
    """Replace Grafana variables by values Prometheus accepts (longest names first)."""
    subs = {**SUBSTITUTIONS, **(extra or {})}
    for k in sorted(subs, key=len, reverse=True):
        expr = expr.replace(k, subs[k])
    return expr


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels with targets, in dashboard order (rows flattened)."""
    out = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(c for c in p.get("panels", []) if c.get("targets"))
        elif p.get("targets"):
            out.append(p)
    return out


def query_range(prom: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=20) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{expr}: {e.read().decode()[:300]}") from None
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt or "{{__name__}}"
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def render(prom: str, out: Path, minutes: float = 10.0, dashboard: Path = DASHBOARD, cols: int = 3,
           skip_empty: bool = False) -> dict[str, int]:
    """Draw every panel; returns {panel title: number of series drawn}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dash = json.loads(Path(dashboard).read_text())
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 300)
    data = []
    for p in panels(dash):
        series = []
        for t in p["targets"]:
            for s in query_range(prom, substitute(t["expr"]), start, end, step):
                xs = [float(v[0]) - end for v in s["values"]]
                ys = [float(v[1]) for v in s["values"]]
                series.append((legend(t.get("legendFormat", ""), s["metric"]), xs, ys))
        if series or not skip_empty:
            data.append((p, series))
    rows = (len(data) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(data):]:
        ax.axis("off")
    for ax, (p, series) in zip(axes.flat, data, strict=False):
        ax.set_title(p["title"], fontsize=10)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if not series:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        for name, xs, ys in series:
            if p.get("type") == "stat":
                ax.plot(xs, ys, label=f"{name} = {ys[-1]:.3g}")
            else:
                ax.plot(xs, ys, label=name, linewidth=1.2)
        ax.set_xlabel("seconds before now", fontsize=8)
        if unit:
            ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        if series:
            ax.legend(fontsize=6, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{dash['title']} (rendered from Prometheus, last {minutes:g} min)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return {p["title"]: len(series) for p, series in data}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--out", default="dashboard.png")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--dashboard", default=str(DASHBOARD))
    ap.add_argument("--skip-empty", action="store_true", help="Leave out panels without data (e.g. GPU).")
    a = ap.parse_args(argv)
    counts = render(a.prometheus, Path(a.out), a.minutes, Path(a.dashboard), skip_empty=a.skip_empty)
    for title, n in counts.items():
        print(f"{n:3d} series  {title}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
