"""Metrics definitions, the queue exporter, Prometheus rules and Grafana dashboards."""
