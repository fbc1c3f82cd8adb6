"""Admin HTTP endpoints (aiohttp): /healthz, /readyz and /mappings."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web

from poller.runner import MappingRunner

log = logging.getLogger(__name__)


class AdminServer:
    """Serves the state of the runners; started before them, stopped after them."""

    def __init__(self, host: str, port: int, runners: Mapping[str, MappingRunner]) -> None:
        self.host = host
        self.port = port
        self.runners = runners
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/mappings", self._mappings)
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
            name: runner.status.last_error or runner.status.state
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
                    "lastError": runner.status.last_error,
                    "counts": runner.stats.as_dict(),
                }
                for name, runner in self.runners.items()
            }
        )
