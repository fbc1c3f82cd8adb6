"""The function URLs of a running poller: a listener for every function with a ``function_url``.

The App starts them once its functions started and closes them before it closes the functions, so
that requests in flight finish within the drain. On a reload, a listener whose settings changed
(or whose function is gone) is closed and, if still wanted, started anew; one whose settings are
the same keeps listening and gets the reloaded function under it (:meth:`FunctionUrlListener.swap`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from poller.config import Function
from poller.config.admin import AdminCredentials
from poller.config.function_url import FunctionUrl
from poller.invocation.sigv4 import SignatureVerifier
from poller.invocation.urls.listener import FunctionUrlError, FunctionUrlListener
from poller.observability.tracing import Telemetry
from poller.observability.url_telemetry import UrlTelemetry
from poller.runtime.function import FunctionRuntime

log = logging.getLogger(__name__)


class FunctionUrls:
    """Every function URL listener of one App, by function name."""

    def __init__(self, telemetry: Telemetry, credentials: AdminCredentials | None = None) -> None:
        """``credentials``: what requests to ``AWS_IAM`` URLs must be signed with."""
        self.telemetry = UrlTelemetry(telemetry)
        self.verifier = (
            SignatureVerifier(credentials.access_key_id, credentials.secret_access_key.reveal())
            if credentials is not None
            else None
        )
        self.listeners: dict[str, FunctionUrlListener] = {}

    async def start(self, urls: Mapping[str, FunctionUrl], functions: Mapping[str, FunctionRuntime]) -> None:
        """Start a listener for each of ``urls`` (function name to settings). Raises
        FunctionUrlError, with every listener stopped, if one cannot listen."""
        try:
            for name, settings in urls.items():
                await self._open(name, settings, functions[name])
        except FunctionUrlError:
            await self.close(0)
            raise

    async def reload(
        self, urls: Mapping[str, FunctionUrl], functions: Mapping[str, FunctionRuntime], drain_timeout: float
    ) -> None:
        """Make the listeners those of ``urls``: close the ones no longer wanted or changed (their
        requests in flight finish first), start the new and changed ones, and swap the reloaded
        functions under those that stay. A listener that cannot start is logged, not raised: the
        rest of the reload has happened by then."""
        gone = [name for name, listener in self.listeners.items() if urls.get(name) != listener.settings]
        await _close_all([self.listeners.pop(name) for name in gone], drain_timeout)
        for name, settings in urls.items():
            listener = self.listeners.get(name)
            if listener is not None:
                listener.swap(functions[name])
                continue
            try:
                await self._open(name, settings, functions[name])
            except FunctionUrlError as exc:
                log.error("reload: %s", exc)

    async def close(self, drain_timeout: float) -> None:
        """Close every listener; the requests in flight get ``drain_timeout`` seconds to finish."""
        listeners, self.listeners = list(self.listeners.values()), {}
        await _close_all(listeners, drain_timeout)

    async def _open(self, name: str, settings: FunctionUrl, function: FunctionRuntime) -> None:
        listener = FunctionUrlListener(name, settings, function, self.telemetry, self.verifier)
        await listener.start()
        self.listeners[name] = listener


def urls_of(functions: Mapping[str, Function]) -> dict[str, FunctionUrl]:
    """The function URL settings of the functions that have one, by function name."""
    return {name: function.function_url for name, function in functions.items() if function.function_url}


async def _close_all(listeners: list[FunctionUrlListener], drain_timeout: float) -> None:
    """Close listeners at once: each one's drain runs beside the others'."""
    async with asyncio.TaskGroup() as closing:
        for listener in listeners:
            closing.create_task(listener.close(drain_timeout), name=f"close function URL:{listener.name}")
