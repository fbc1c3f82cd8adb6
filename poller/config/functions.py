"""A function's settings (SPEC sections 4, 5 and 12): its handler, its runtime, and the limits of
the environments it runs in. Keys as Terraform's ``aws_lambda_function`` names them where it has one
(``provisioned_concurrent_executions`` is ``aws_lambda_provisioned_concurrency_config``'s)."""

from __future__ import annotations

import re
import sys
from typing import Literal, cast

from pydantic import Field, ValidationInfo, field_validator

from poller.config.base import Model
from poller.config.function_url import FunctionUrl
from poller.config.invocation import DeadLetterConfig, EventInvokeConfig

HANDLER_PATTERN = r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$"

# How a function runs (SPEC section 12). ``inline`` imports the handler into poller's own process;
# the others run it in execution environments, processes that speak the Lambda Runtime API.
Runtime = Literal[
    "inline",
    "python3.9",
    "python3.10",
    "python3.11",
    "python3.12",
    "python3.13",
    "python3.14",
    "nodejs18.x",
    "nodejs20.x",
    "nodejs22.x",
    "provided",
    "provided.al2",
    "provided.al2023",
]
# What an omitted ``runtime`` means (SPEC section 12): the Python runtime of the interpreter that runs
# poller, in process environments. Derived rather than written down, so that it always names a
# ``python3.X`` that :func:`poller.runtime.environments.runtimes.python_for` maps to poller's own
# interpreter; ``runtime`` stays None in the model, so the exported schema does not depend on which
# Python generated it.
DEFAULT_RUNTIME = cast(Runtime, f"python{sys.version_info.major}.{sys.version_info.minor}")
NODE_HANDLER_PATTERN = r"^[^\s]*[^\s/.][.][A-Za-z_$][\w$]*([.][A-Za-z_$][\w$]*)*$"


class Function(Model):
    runtime: Runtime | None = Field(
        None,
        description="python3.X (AWS's awslambdaric on poller's interpreter), nodejs18.x/20.x/22.x (node), "
        "provided/provided.al2/provided.al2023 (CODE/bootstrap), or inline (imported into poller's own "
        "process, no isolation). Default: the python3.X of the interpreter that runs poller, in "
        "environments.",
    )
    handler: str = Field(
        min_length=1,
        description="python and inline: module.function (or module:function), called as "
        "handler(event, context), def or async def; nodejs: file.export; provided: passed as _HANDLER.",
    )
    code: str | None = Field(
        None,
        description="The task root of an environment runtime: LAMBDA_TASK_ROOT and its working directory "
        "(relative to poller's working directory; default: poller's working directory).",
    )
    timeout: int = Field(
        3, ge=1, le=900, description="Seconds; an invocation past it fails (Sandbox.Timedout)."
    )
    memory_size: int = Field(
        128,
        ge=128,
        le=10240,
        description="MB, reported in the context; an environment whose processes use more is killed "
        "(Runtime.OutOfMemory).",
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="Set for the handler (in its environments only, unless inline)."
    )
    reserved_concurrent_executions: int | None = Field(
        None, ge=0, description="At most this many concurrent invocations; 0 = throttled."
    )
    provisioned_concurrent_executions: int = Field(
        0,
        ge=0,
        description="Environments initialised at start (before /readyz is true), used first and "
        "replaced when they die; at most reserved_concurrent_executions.",
    )
    idle_timeout_in_seconds: int = Field(
        600, ge=1, le=86400, description="An idle on-demand environment is stopped after this long."
    )
    function_url: FunctionUrl | None = Field(None, description="An HTTP listener that invokes the function.")
    event_invoke_config: EventInvokeConfig = Field(
        default_factory=EventInvokeConfig, description="Retries and destinations of asynchronous invocations."
    )
    dead_letter_config: DeadLetterConfig | None = None

    @property
    def effective_runtime(self) -> Runtime:
        return self.runtime or DEFAULT_RUNTIME

    @property
    def inline(self) -> bool:
        """Whether the handler runs in poller's own process rather than in environments."""
        return self.effective_runtime == "inline"

    @field_validator("handler")
    @classmethod
    def _check_handler(cls, handler: str, info: ValidationInfo) -> str:
        runtime = info.data.get("runtime") or DEFAULT_RUNTIME
        if runtime == "inline" or runtime.startswith("python"):
            if not re.fullmatch(HANDLER_PATTERN, handler):
                raise ValueError("must be module.function (or module:function)")
        elif runtime.startswith("nodejs") and not re.fullmatch(NODE_HANDLER_PATTERN, handler):
            raise ValueError("must be file.export (the file relative to code, without its extension)")
        return handler

    @field_validator("code")
    @classmethod
    def _check_code(cls, code: str | None, info: ValidationInfo) -> str | None:
        if code is not None and (info.data.get("runtime") or DEFAULT_RUNTIME) == "inline":
            raise ValueError("applies to environment runtimes; inline handlers import from PYTHONPATH")
        return code

    @field_validator("provisioned_concurrent_executions")
    @classmethod
    def _check_provisioned(cls, provisioned: int, info: ValidationInfo) -> int:
        if provisioned and (info.data.get("runtime") or DEFAULT_RUNTIME) == "inline":
            raise ValueError("needs an environment runtime (inline functions have no environments)")
        reserved = info.data.get("reserved_concurrent_executions")
        if reserved is not None and provisioned > reserved:
            raise ValueError(f"must be at most reserved_concurrent_executions ({reserved})")
        return provisioned
