"""The Python runtime of poller's environments: AWS's own client, awslambdaric, with one addition,
``async def`` handlers (Lambda's Python runtime has none).

Run by path (``python .../bootstrap.py module.function``), so that it imports nothing of poller.
An environment keeps one event loop for its life: a coroutine handler runs on it, and what the
function's code made on it (clients, connection pools) is still there at the next invocation. It
is the loop asyncio gives the main thread (the one the module code got from
``asyncio.get_event_loop()``, if it asked), made when the first awaitable result comes: importing
asyncio costs a sync handler's cold start more than awslambdaric does. Everything else is
awslambdaric's: the marshalling (``Decimal``, int keys), the error documents, the context object,
the logging.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio


def main() -> None:
    # Run by path, Python put this directory first on sys.path: the function's modules come from
    # its task root instead, as on Lambda, and none of them may be shadowed by a file here.
    sys.path[0] = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
    from awslambdaric import bootstrap
    from awslambdaric.lambda_runtime_client import LambdaRuntimeClient

    find_handler = bootstrap._get_handler

    def get_handler(name: str) -> Callable[[Any, Any], Any]:
        return _awaiting(find_handler(name))

    # awslambdaric finds the handler with this function and reports its failures (ImportModuleError,
    # HandlerNotFound, ...) itself; only what it returns is wrapped.
    bootstrap._get_handler = get_handler
    bootstrap.run(sys.argv[1], LambdaRuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"]))


def _awaiting(handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``handler``, whose awaitable results (an ``async def`` handler's) are run to their end on
    the environment's event loop."""

    def call(event: Any, context: Any) -> Any:
        result = handler(event, context)
        if not inspect.isawaitable(result):
            return result
        try:
            return _event_loop().run_until_complete(_wait(result))
        except Exception as exc:
            # The stack trace in the error document is the handler's, not the event loop's.
            raise exc.with_traceback(_without_asyncio(exc.__traceback__)) from exc.__cause__

    return call


_loop: asyncio.AbstractEventLoop | None = None


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None or _loop.is_closed():
        import asyncio

        with warnings.catch_warnings():
            # Python 3.12 warns, and 3.14 refuses, where no loop was set: then one is made here.
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                _loop = asyncio.get_event_loop_policy().get_event_loop()
            except RuntimeError:
                _loop = None
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            asyncio.set_event_loop(_loop)
    return _loop


async def _wait(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _without_asyncio(traceback: types.TracebackType | None) -> types.TracebackType | None:
    import asyncio

    package = os.path.dirname(asyncio.__file__)
    frames = []
    while traceback is not None:
        if not traceback.tb_frame.f_code.co_filename.startswith(package):
            frames.append(traceback)
        traceback = traceback.tb_next
    rebuilt = None
    for frame in reversed(frames):
        rebuilt = types.TracebackType(rebuilt, frame.tb_frame, frame.tb_lasti, frame.tb_lineno)
    return rebuilt


if __name__ == "__main__":
    main()
