"""A scenario file (TOML) and what it may say.

    name = "gpu-n64"                      # the record's and the baseline's name
    description = "..."
    gpus = 1                              # GPUs the worker / replica gets (0 on a CPU machine)

    [policy]                              # the backend under test, shared by every phase
    backend = "gr00t"
    options = { mode = "n17-random", device = "cuda" }
    graph_options = { cuda_graph_batch_sizes = [1, 64] }   # merged where a phase says graphs = true

    [load]                                # the synthetic closed-loop simulators (load.py)
    step_ms = 2.0; horizon = 8; procs = 16; warmup_s = 8; window_s = 10; paced = true

    [model]                               # A: the model alone; omit to skip
    sizes = [1, 64]; warmup = 2; reps = 8; graphs = true
    eager_too = true                      # with graphs: the eager network too, and the capture's gain
    beside = true                         # keep it loaded and time it again after each C window

    [[reference]]                         # B: the reference design, one table per variant
    ns = [1, 8, 32, 64]; graphs = false; warmup_s = { "32" = 15, "64" = 20 }

    [[rolloutq]]                          # C: one table per configuration
    name = "plain, vec16"; mode = "plain"; ns = [64]; graphs = true
    rows_per_request = 16; shared_frames = true; steps = true
    max_batch_size = 64; max_wait_ms = 10
    options = { register_shared_frames = false }   # backend option overrides for this run
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from benchmarks.harness.model import PolicySpec


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the key to fix."""


@dataclass(frozen=True)
class LoadSettings:
    step_ms: float = 2.0
    horizon: int = 8
    procs: int = 8
    warmup_s: float = 8.0
    window_s: float = 10.0
    paced: bool = True


@dataclass(frozen=True)
class ModelPhase:
    sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    warmup: int = 2
    reps: int = 6
    graphs: bool = False
    eager_too: bool = False  # with graphs: also time the eager network at the same sizes (the capture's gain)
    beside: bool = False


@dataclass(frozen=True)
class ReferencePhase:
    name: str = "reference"
    ns: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    graphs: bool = False
    warmup_s: dict[str, float] = field(default_factory=dict)  # per N; the load's warm-up otherwise


@dataclass(frozen=True)
class RolloutqRun:
    name: str = "rolloutq"
    mode: str = "plain"
    ns: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    graphs: bool = False
    rows_per_request: int = 1
    shared_frames: bool = False
    steps: bool = False  # ask for only the horizon's steps of each chunk
    max_batch_size: int = 64
    max_wait_ms: float = 10.0
    replica_cpus: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    gpus: float
    policy: PolicySpec
    load: LoadSettings
    model: ModelPhase | None
    reference: list[ReferencePhase]
    rolloutq: list[RolloutqRun]
    path: str = ""


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ScenarioError(f"{where} must be a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**data)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: cannot read the scenario: {e}") from e
    top = {"name", "description", "gpus", "policy", "load", "model", "reference", "rolloutq"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ScenarioError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(top))}")
    pol = data.get("policy", {})
    if "backend" not in pol:
        raise ScenarioError(f"{path}: [policy] needs a backend (e.g. backend = \"fixed-cost\")")
    extra = sorted(set(pol) - {"backend", "options", "graph_options"})
    if extra:
        raise ScenarioError(f"{path}: [policy]: unknown key(s) {', '.join(extra)}")
    scenario = Scenario(
        name=data.get("name", path.stem),
        description=data.get("description", ""),
        gpus=float(data.get("gpus", 0)),
        policy=PolicySpec(pol["backend"], dict(pol.get("options", {})), dict(pol.get("graph_options", {}))),
        load=_build(LoadSettings, data.get("load", {}), f"{path}: [load]"),
        model=_build(ModelPhase, data["model"], f"{path}: [model]") if "model" in data else None,
        reference=[_build(ReferencePhase, r, f"{path}: [[reference]]") for r in data.get("reference", [])],
        rolloutq=[_build(RolloutqRun, r, f"{path}: [[rolloutq]]") for r in data.get("rolloutq", [])],
        path=str(path),
    )
    for run in scenario.rolloutq:
        if run.mode not in ("plain", "serve"):
            raise ScenarioError(f"{path}: [[rolloutq]] {run.name!r}: mode must be \"plain\" or \"serve\"")
        bad = [n for n in run.ns if n % run.rows_per_request]
        if bad:
            raise ScenarioError(f"{path}: [[rolloutq]] {run.name!r}: N = {bad} do not split into simulators of "
                                f"{run.rows_per_request} rows")
    return scenario
