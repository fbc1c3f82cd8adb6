"""Which function an Invoke API request names: ``FunctionName`` as a name, a partial ARN or an ARN,
each with an optional qualifier, and the ``Qualifier`` query parameter
(https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html#API_Invoke_RequestSyntax).

poller's functions have one version, ``$LATEST``: any other qualifier (a version number or an
alias) names something that does not exist, which Lambda answers with ResourceNotFoundException.
An ARN names the function only in poller's region and account.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from poller.connections.account import ACCOUNT_ID
from poller.invocation.errors import ApiError, function_not_found, invalid_parameter
from poller.runtime.function import FunctionRuntime

LATEST = "$LATEST"
_REFERENCE = re.compile(
    r"(?:arn:(?P<partition>aws[\w-]*):lambda:(?P<region>[a-z0-9-]+):)?"
    r"(?:(?P<account>\d{12}):function:)?"
    r"(?P<name>[^:]+)"
    r"(?::(?P<qualifier>[^:]+))?"
)


@dataclass(frozen=True)
class FunctionReference:
    name: str
    region: str | None = None  # these three are given by an ARN (the account by a partial one too)
    account: str | None = None
    partition: str | None = None
    qualifier: str | None = None

    def arn(self, default_region: str) -> str:
        """The ARN of what the reference names (with its qualifier), as Lambda writes it in errors."""
        arn = (
            f"arn:{self.partition or 'aws'}:lambda:{self.region or default_region}:"
            f"{self.account or ACCOUNT_ID}:function:{self.name}"
        )
        return f"{arn}:{self.qualifier}" if self.qualifier else arn

    def names(self, function: FunctionRuntime) -> bool:
        """Whether the reference is to ``function``'s ``$LATEST`` (in its region and account)."""
        return (
            self.name == function.name
            and self.qualifier in (None, LATEST)
            and (self.region or function.region) == function.region
            and (self.account or ACCOUNT_ID) == ACCOUNT_ID
            and (self.partition or "aws") == "aws"
        )


def parse_function_name(function_name: str) -> FunctionReference | None:
    """The parts of ``FunctionName``; None if it has none of Lambda's forms."""
    match = _REFERENCE.fullmatch(function_name)
    if match is None or (match["region"] is not None and match["account"] is None):
        return None
    return FunctionReference(
        match["name"], match["region"], match["account"], match["partition"], match["qualifier"]
    )


def resolve(
    functions: Mapping[str, FunctionRuntime],
    function_name: str,
    qualifier: str | None,
    *,
    default_region: str,
) -> FunctionRuntime | ApiError:
    """The function that ``function_name`` and the ``Qualifier`` parameter name, or the error
    Lambda answers. A name of poller's that looks like a qualified one (poller allows ``:`` in
    names) is taken as the name first."""
    if function_name in functions:
        reference: FunctionReference | None = FunctionReference(function_name)
    else:
        reference = parse_function_name(function_name)
    if reference is None:
        return function_not_found(FunctionReference(function_name).arn(default_region))
    if qualifier is not None and reference.qualifier is not None and qualifier != reference.qualifier:
        return invalid_parameter(
            "The derived qualifier from the function name does not match the specified qualifier."
        )
    reference = replace(reference, qualifier=reference.qualifier or qualifier)
    function = functions.get(reference.name)
    if function is None:
        return function_not_found(reference.arn(default_region))
    if not reference.names(function):
        return function_not_found(reference.arn(function.region))
    return function
