"""What a mapping reports about itself (``/mappings``, ``/readyz``, ``/metrics``): its status and counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# As AWS names an event source mapping's State (UpdateEventSourceMapping); Failed is poller's own,
# for a mapping that stopped on an error it cannot heal from.
MappingState = Literal["Creating", "Enabling", "Connecting", "Enabled", "Disabling", "Disabled", "Failed"]


@dataclass
class MappingCounts:
    """Record counts since start, per mapping (AWS's ESM EventCount metrics, and a few more)."""

    polled: int = 0
    filtered: int = 0  # matched no filter: committed without an invocation
    invoked: int = 0
    succeeded: int = 0
    failed: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    retries: int = 0
    bisections: int = 0
    invocations: int = 0
    in_flight: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class MappingStatus:
    """One mapping's state, whether it is connected and polling (``ready``), why not if it is not
    (``last_error``), and its counts."""

    state: MappingState = "Creating"
    ready: bool = False
    last_error: str | None = None
    counts: MappingCounts = field(default_factory=MappingCounts)
