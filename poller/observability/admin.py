"""Admin HTTP endpoints (aiohttp): /healthz, /readyz, /metrics, /mappings, the controls that
act on a running poller (POST /reload, /mappings/NAME/enable and /mappings/NAME/disable), and the
Lambda Invoke API (:mod:`poller.invocation.api`).

``/readyz`` is true once every enabled mapping polls and every function is started (its
provisioned environments initialised). With ``admin.token`` every endpoint but /healthz and
/readyz (which probes must reach without credentials) needs ``Authorization: Bearer <token>``,
compared in constant time (SPEC section 16); so does the Invoke API, unless ``admin.credentials``
are set, in which case it checks SigV4 signatures itself and the token does not apply to it.
Errors shown here (``lastError``, the reasons on ``/readyz``) pass through
:func:`poller.redaction.redact`: no password or URL credentials leave through the admin port.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from poller.engine.windows import state_size
from poller.invocation.api import InvokeApi
from poller.observability.metrics import FunctionCollector, RunnerCollector, lag_of
from poller.redaction import redact
from poller.runtime.function import FunctionRuntime
from poller.runtime.runner import MappingRunner
from poller.sources import Lagging

log = logging.getLogger(__name__)


OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes reach these without a token


class Controls(Protocol):
    """What the admin endpoints may ask of the running service (the App)."""

    def request_reload(self) -> None: ...

    async def enable(self, name: str) -> str:
        """Start a disabled mapping; returns its state."""

    async def disable(self, name: str) -> str:
        """Drain a mapping and stop it; returns its state."""


class AdminServer:
    """Serves the state of the runners; started before them, stopped after them."""

    def __init__(
        self,
        host: str,
        port: int,
        runners: Mapping[str, MappingRunner],
        registry: CollectorRegistry,
        *,
        controls: Controls | None = None,
        token: str | None = None,
        functions: Mapping[str, FunctionRuntime] | None = None,
        invoke_api: InvokeApi | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.runners = runners
        self.functions = functions or {}
        self.registry = registry
        self.controls = controls
        self._token = token.encode() if token else None
        self.invoke_api = invoke_api
        registry.register(RunnerCollector(runners))
        registry.register(FunctionCollector(self.functions))
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/mappings", self._mappings)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/reload", self._reload)
        app.router.add_post("/mappings/{name}/{action:enable|disable}", self._switch)
        if self.invoke_api is not None:
            self.invoke_api.add_routes(app.router)
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

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        signed = self.invoke_api is not None and self.invoke_api.authenticates(request)
        if self._token is not None and request.path not in OPEN_PATHS and not signed:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self._token):
                return web.json_response(
                    {"message": "a valid admin token is required (Authorization: Bearer <token>)"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="poller"'},
                )
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        # Mappings disabled in the file or at run time are not expected to poll.
        not_ready = {
            name: redact(runner.status.last_error or runner.status.state)
            for name, runner in self.runners.items()
            if not runner.status.ready and runner.status.state not in ("Disabled", "Disabling")
        }
        starting = [name for name, function in self.functions.items() if not function.ready]
        body: dict[str, object] = {"ready": not not_ready and not starting, "mappings": not_ready}
        if starting:
            body["functions"] = {name: "initialising provisioned environments" for name in starting}
        return web.json_response(body, status=200 if body["ready"] else 503)

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

    async def _reload(self, request: web.Request) -> web.Response:
        if self.controls is None:
            return web.json_response({"message": "this poller cannot reload"}, status=409)
        self.controls.request_reload()
        return web.json_response({"reload": "requested"}, status=202)

    async def _switch(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.runners:
            return web.json_response({"message": f"no mapping {name!r}"}, status=404)
        if self.controls is None:
            return web.json_response({"message": "this poller cannot switch mappings"}, status=409)
        if request.match_info["action"] == "enable":
            state = await self.controls.enable(name)
        else:
            state = await self.controls.disable(name)
        return web.json_response({"mapping": name, "state": state}, status=202)


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
