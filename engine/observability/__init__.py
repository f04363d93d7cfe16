"""Observability: structured logging and the Prometheus metrics registry."""
