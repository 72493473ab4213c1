"""The driver: evaluation sweeps, results and reports, the autoscaler, and the `rolloutq` CLI."""
