"""Finding a function's handler: ``module:callable`` (or Lambda's ``module.callable``), imported
as Python imports any module, from the working directory and ``PYTHONPATH`` (SPEC section 5)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from poller.errors import HandlerLoadError


def handler_parts(handler: str) -> tuple[str, str]:
    """Split ``module:callable`` or Lambda's ``module.callable`` into (module, attribute)."""
    if ":" in handler:
        module, _, attribute = handler.partition(":")
    else:
        module, _, attribute = handler.rpartition(".")
    return module, attribute


def load_handler(handler: str) -> Callable[..., Any]:
    """Import ``module:callable`` (or ``module.callable``) from the working directory and PYTHONPATH.

    Raises HandlerLoadError with a one-line reason when the module or attribute is missing, the
    module fails to import, or the attribute is not callable.
    """
    module_name, attribute = handler_parts(handler)
    _add_working_directory_to_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise HandlerLoadError(f"cannot import module {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise HandlerLoadError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target = getattr(module, attribute, None)
    if target is None:
        raise HandlerLoadError(f"module {module_name!r} has no attribute {attribute!r}")
    if not callable(target):
        raise HandlerLoadError(f"{handler!r} is not callable")
    return target  # type: ignore[no-any-return]


def _add_working_directory_to_path() -> None:
    # Lambda imports handlers from the task root; the console script starts with its own bin
    # directory on sys.path, not the working directory.
    cwd = os.getcwd()
    if not any(entry in ("", ".", cwd) for entry in sys.path):
        sys.path.insert(0, cwd)
