"""What a mapping reports about itself: its state and its record counts (``/mappings``, ``/metrics``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MappingStats:
    """Record counts since start, per mapping (AWS's ESM EventCount metrics, and a few more)."""

    polled: int = 0
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
class MappingState:
    state: str = "Creating"  # Creating, Connecting, Enabled, Disabling, Disabled, Failed
    last_error: str | None = None
    ready: bool = False
    stats: MappingStats = field(default_factory=MappingStats)
