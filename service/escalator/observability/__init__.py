"""Prometheus metrics, JSON-lines logs, and the /healthz, /readyz and /metrics server."""
