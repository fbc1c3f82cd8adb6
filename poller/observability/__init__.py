"""What poller tells about itself: traces (OpenTelemetry), metrics (Prometheus), logs, and the
admin HTTP endpoints that serve readiness and the state of every mapping."""
