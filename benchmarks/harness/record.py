"""What a benchmark result must carry to be cited: the git revision, the machine and the date.

Every harness run and every benchmark script writes its figures through `write_record`, so a
number in docs/benchmarks.md can always be traced to the code and the host that produced it.
Raw records go to benchmarks/out/ (not committed); curated ones to benchmarks/baselines/.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "benchmarks" / "out"
BASELINE_DIR = ROOT / "benchmarks" / "baselines"
REVISION_FILE = ROOT / "REVISION"
"""Written by benchmarks/prepare_gpu.sh into the carried code, which has no .git."""


def revision() -> dict[str, Any]:
    """The checkout's commit and whether the tree differed from it (`dirty`). Carried code names its own
    revision: the folder it travels in may sit inside another checkout whose `.git` is not its own."""
    if REVISION_FILE.exists():
        return json.loads(REVISION_FILE.read_text())
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"revision": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"revision": "unknown", "dirty": None}


def machine() -> dict[str, Any]:
    """The host: CPU count, Python, the GPU and the versions of the libraries that set the figures."""
    info: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    for mod in ("numpy", "redis", "msgpack", "ray", "torch", "transformers", "lerobot"):
        if mod in sys.modules or mod in ("numpy", "redis", "msgpack"):
            with contextlib.suppress(Exception):
                info[mod] = __import__(mod).__version__
    with contextlib.suppress(Exception):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if smi.returncode == 0 and smi.stdout.strip():
            info["gpu"] = smi.stdout.strip()
    return info


def make_record(scenario: str, command: str, results: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "command": command,
        **revision(),
        "machine": machine(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
        "results": results,
    }


def default_path(scenario: str, out: str | Path | None = None) -> Path:
    """`out` if it names a .json file; else OUT/SCENARIO-DATE.json (OUT: `out` or benchmarks/out/)."""
    if out is not None and str(out).endswith(".json"):
        return Path(out)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path(out or OUT_DIR) / f"{scenario}-{stamp}.json"


def write_record(record: dict[str, Any], path: str | Path | None = None, baseline: bool = False) -> Path:
    """Write to `path` (default: `default_path`); with `baseline`, also to benchmarks/baselines/SCENARIO.json."""
    target = Path(path) if path else default_path(record["scenario"])
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, default=str) + "\n"
    target.write_text(text)
    if baseline:
        BASELINE_DIR.mkdir(parents=True, exist_ok=True)
        (BASELINE_DIR / f"{record['scenario']}.json").write_text(text)
    return target
