"""The benchmark harness: a load generator, a GPU sampler and statistics, driven by scenario files.

A scenario (benchmarks/scenarios/*.toml) names what it measures: the model alone (A), the
reference serving design (B) and rolloutq (C) at N closed-loop rollouts. Run one with
`python -m benchmarks.harness benchmarks/scenarios/NAME.toml`; every run writes one record with
the git revision, the machine and the date (record.py), and `--baseline` keeps it under
benchmarks/baselines/ for docs/benchmarks.md to cite.
"""
