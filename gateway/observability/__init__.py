"""Seeing the gateway run: structured logs and Prometheus metrics."""
