"""Admin HTTP endpoints (aiohttp): /healthz, /readyz, /metrics and /mappings.

Errors shown here (``lastError``, the reasons on ``/readyz``) pass through
:func:`poller.redaction.redact`: no password or URL credentials leave through the admin port.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from poller.engine.windows import state_size
from poller.observability.metrics import RunnerCollector, lag_of
from poller.redaction import redact
from poller.runtime.runner import MappingRunner
from poller.sources import Lagging

log = logging.getLogger(__name__)


class AdminServer:
    """Serves the state of the runners; started before them, stopped after them."""

    def __init__(
        self, host: str, port: int, runners: Mapping[str, MappingRunner], registry: CollectorRegistry
    ) -> None:
        self.host = host
        self.port = port
        self.runners = runners
        self.registry = registry
        registry.register(RunnerCollector(runners))
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/mappings", self._mappings)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the real port when 0 asked for a free one
        log.info("admin endpoints on http://%s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        not_ready = {
            name: redact(runner.status.last_error or runner.status.state)
            for name, runner in self.runners.items()
            if not runner.status.ready
        }
        body = {"ready": not not_ready, "mappings": not_ready}
        return web.json_response(body, status=200 if not not_ready else 503)

    async def _mappings(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                name: {
                    "state": runner.status.state,
                    "ready": runner.status.ready,
                    # Redacted again here: a last error may come from anywhere in a source.
                    "lastError": redact(runner.status.last_error) if runner.status.last_error else None,
                    "sourceType": runner.mapping.source.type,
                    "function": runner.mapping.function_name,
                    "counts": runner.status.counts.as_dict(),
                    **_lag_entries(runner),
                    **_window_entries(runner),
                }
                for name, runner in self.runners.items()
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _lag_entries(runner: MappingRunner) -> dict[str, dict[str, int]]:
    """``lag`` of every mapping (empty where the source has none), or the key its source's lag
    metric names (Kinesis: ``iteratorAgeMilliseconds``)."""
    entries: dict[str, dict[str, int]] = {"lag": {}}
    if isinstance(runner.source, Lagging):
        entries[runner.source.lag_metric.key] = lag_of(runner)
    return entries


def _window_entries(runner: MappingRunner) -> dict[str, dict[str, dict[str, object]]]:
    """``windows``: each open tumbling window of the mapping, by partition."""
    if runner.windows is None:
        return {}
    return {
        "windows": {
            partition: {**window.window.describe(), "stateBytes": state_size(window.state)}
            for partition, window in runner.windows.open_windows().items()
        }
    }
