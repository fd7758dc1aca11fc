"""Seeing the gateway run: the request log line's facts, structured logs, Prometheus metrics
and OpenTelemetry traces."""
