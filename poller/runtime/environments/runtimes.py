"""How each ``runtime`` starts an environment, the variables it gets, and what ``poller validate``
can check about it without running the function's code.

- ``python3.X``: AWS's own runtime interface client, ``awslambdaric``, on poller's interpreter when
  the version is poller's (else ``python3.X`` from ``PATH``, which must have awslambdaric), started
  through :mod:`.clients.bootstrap`, which adds ``async def`` handlers and a persistent event loop.
- ``nodejs18.x`` / ``20.x`` / ``22.x``: ``node`` from ``PATH`` running poller's own Runtime API
  client (``clients/node/index.mjs``, no native build: AWS's ``aws-lambda-ric`` needs one of about
  a minute and a half, and runs unchanged as a ``provided`` bootstrap for who wants it).
- ``provided``, ``provided.al2``, ``provided.al2023``: ``CODE/bootstrap``, any executable.

Imports nothing of poller's config: :mod:`poller.config.loader` imports this module for its checks.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from poller.errors import PollerError

CLIENTS = Path(__file__).resolve().parent / "clients"
PYTHON_BOOTSTRAP = CLIENTS / "bootstrap.py"
NODE_CLIENT = CLIENTS / "node" / "index.mjs"
NODE_EXTENSIONS = (".js", ".mjs", ".cjs")
# Variables an environment must not inherit from poller: per invocation (the trace header), or
# switches of AWS's clients that change how they run (forked workers, a framed log pipe).
NOT_INHERITED = (
    "_X_AMZN_TRACE_ID",
    "AWS_LAMBDA_MAX_CONCURRENCY",
    "_LAMBDA_TELEMETRY_LOG_FD",
    "AWS_EXECUTION_ENV",
)


class RuntimeUnavailable(PollerError):
    """A function's runtime cannot be started here (no ``node``, no such Python version)."""


@dataclass(frozen=True)
class Launch:
    """How one function's environments start."""

    argv: tuple[str, ...]
    handler: str  # _HANDLER, as the runtime's client expects it
    task_root: Path  # LAMBDA_TASK_ROOT and the working directory
    runtime_dir: Path  # LAMBDA_RUNTIME_DIR
    execution_env: str | None  # AWS_EXECUTION_ENV; Lambda sets none for custom runtimes
    # Its client is poller's own (clients/bootstrap.py): it reads events from a memory file
    # (event_memory.py) and speaks to the API over a socket pair it inherits (api.py).
    poller_client: bool = False


def task_root(code: str | None) -> Path:
    """The task root ``code`` names (relative to poller's working directory), by default poller's
    working directory."""
    return Path(code or os.getcwd()).resolve()


def launch_of(runtime: str, handler: str, code: str | None) -> Launch:
    """How environments of ``runtime`` start; raises RuntimeUnavailable when they cannot here."""
    root = task_root(code)
    if runtime.startswith("python"):
        interpreter = python_for(runtime)
        # awslambdaric takes module.function (and module/path.function); poller also accepts
        # module:function.
        dotted = handler.replace(":", ".") if ":" in handler else handler
        return Launch(
            (interpreter, str(PYTHON_BOOTSTRAP), dotted),
            dotted,
            root,
            CLIENTS,
            f"AWS_Lambda_{runtime}",
            poller_client=True,
        )
    if runtime.startswith("nodejs"):
        node = shutil.which("node")
        if node is None:
            raise RuntimeUnavailable(f"runtime {runtime}: no node on PATH")
        return Launch((node, str(NODE_CLIENT)), handler, root, NODE_CLIENT.parent, f"AWS_Lambda_{runtime}")
    if runtime.startswith("provided"):
        return Launch((str(root / "bootstrap"),), handler, root, root, None)
    raise RuntimeUnavailable(f"runtime {runtime} does not run in environments")


def python_for(runtime: str) -> str:
    """The interpreter of ``python3.X``: poller's own when it is that version, else ``python3.X``
    from PATH."""
    version = runtime.removeprefix("python")
    if version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        raise RuntimeUnavailable(
            f"runtime {runtime}: no python{version} on PATH (poller runs on "
            f"python{sys.version_info.major}.{sys.version_info.minor})"
        )
    return found


def variables(
    launch: Launch,
    *,
    inherited: Mapping[str, str],
    function_environment: Mapping[str, str],
    function_name: str,
    memory_size: int,
    region: str,
    api_address: str,
    initialization_type: str,
    log_stream_name: str,
) -> dict[str, str]:
    """An environment's variables: poller's own, then the function's ``environment``, then
    Lambda's reserved ones, which the function cannot override (as on Lambda)
    (https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime)."""
    env = {key: value for key, value in inherited.items() if key not in NOT_INHERITED}
    env.update(function_environment)
    env.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_size),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name,
            "AWS_LAMBDA_RUNTIME_API": api_address,
            "AWS_LAMBDA_INITIALIZATION_TYPE": initialization_type,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "LAMBDA_TASK_ROOT": str(launch.task_root),
            "LAMBDA_RUNTIME_DIR": str(launch.runtime_dir),
            "_HANDLER": launch.handler,
            "TZ": ":UTC",
        }
    )
    if launch.execution_env is not None:
        env["AWS_EXECUTION_ENV"] = launch.execution_env
    return env


def check(runtime: str, handler: str, code: str | None) -> list[tuple[str, str]]:
    """What ``poller validate`` finds wrong with a function that runs in environments, as (key,
    problem) pairs, without running any of its code: the task root exists; a Python handler's
    module file is there (under ``code``, on PYTHONPATH or installed); a Node.js handler's file
    is under ``code`` and ``node`` is on PATH; a custom runtime's ``bootstrap`` is an executable
    file. A module that fails when it imports shows at its first init, as on Lambda."""
    root = task_root(code)
    if not root.is_dir():
        return [("code", f"{root} is not a directory")]
    try:
        launch_of(runtime, handler, code)
    except RuntimeUnavailable as exc:
        return [("runtime", str(exc).partition(": ")[2])]
    if runtime.startswith("python"):
        module = (handler.partition(":")[0] if ":" in handler else handler.rpartition(".")[0]).replace(
            "/", "."
        )
        if python_for(runtime) == sys.executable and not _python_module_exists(module, root):
            return [("handler", f"no module {module!r} under {root}, on PYTHONPATH or installed")]
    elif runtime.startswith("nodejs"):
        file = _node_file(handler)
        if not any((root / (file + extension)).is_file() for extension in NODE_EXTENSIONS):
            return [("handler", f"no {file}.js, {file}.mjs or {file}.cjs under {root}")]
    elif runtime.startswith("provided"):
        bootstrap = root / "bootstrap"
        if not bootstrap.is_file():
            return [("code", f"no bootstrap in {root} (a custom runtime starts CODE/bootstrap)")]
        if not os.access(bootstrap, os.X_OK):
            return [("code", f"{bootstrap} is not executable (chmod +x)")]
    return []


def _node_file(handler: str) -> str:
    """The module path of ``path/to/file.export`` (the first dot after the last slash ends it)."""
    directory, _, name = handler.rpartition("/")
    file = name.partition(".")[0]
    return f"{directory}/{file}" if directory else file


def _installed_package(name: str) -> importlib.machinery.ModuleSpec | None:
    """A top-level package that an import hook finds rather than a sys.path entry (an editable
    install's finder); asking a finder for a top-level name runs no code."""
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if finder is importlib.machinery.PathFinder or find_spec is None:
            continue
        spec: importlib.machinery.ModuleSpec | None = find_spec(name, None)
        if spec is not None and spec.origin not in ("built-in", "frozen"):
            return spec
    return None


def _python_module_exists(module: str, root: Path) -> bool:
    """Whether ``module`` can be found from ``root`` and poller's import path, looking at files
    only: a package's ``__init__`` is never run (``importlib.util.find_spec`` would run it)."""
    search: list[str] = [str(root), *sys.path]
    parts = module.split(".")
    for index in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: index + 1]), search)
        if spec is None and index == 0:
            spec = _installed_package(parts[0])
        if spec is None:
            return False
        if index < len(parts) - 1:
            if not spec.submodule_search_locations:
                return False
            search = list(spec.submodule_search_locations)
    return True
