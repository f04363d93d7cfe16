"""The admin HTTP server: health, readiness, Prometheus metrics and the JSON API."""
