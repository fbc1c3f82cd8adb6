"""What every broker harness offers the shared guarantee suite, and the one look at the counters.

A harness drives one source broker through a test: fresh resources (:meth:`BrokerHarness.create`),
the config of mapping ``m`` (:meth:`BrokerHarness.config`), records in (:meth:`BrokerHarness.produce`)
and out (:meth:`BrokerHarness.dead_letters`), and what the source has settled
(:meth:`BrokerHarness.unsettled`). The tests touch the product only through ``Config``, ``App``,
``support`` and the brokers; the engine's counters are read in :func:`counters` alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from support import mapping_config

from poller.app import App
from poller.config import Config

MAPPING = "m"  # the name support.mapping_config gives the mapping


@dataclass(frozen=True)
class Sent:
    """A record as the harness wrote it, named as ``guarantee_handlers.Seen`` names what was handled."""

    lane: str
    position: int | str
    body: str


@dataclass(frozen=True)
class Counters:
    invocations: int
    succeeded: int  # records in invocations that succeeded
    failed: int  # records in invocations that failed
    dead_lettered: int  # records the on-failure destination confirmed
    filtered: int  # records that matched no filter: committed, never invoked


def counters(app: App) -> Counters:
    """The engine's counters of mapping ``m``: the only place the suite reads them in process."""
    counts = app.runners[MAPPING].status.counts
    return Counters(
        counts.invocations, counts.succeeded, counts.failed, counts.dead_lettered, counts.filtered
    )


class BrokerHarness(ABC):
    """One source broker and the on-failure destination that goes with it, for one test.

    ``ordered`` sources (Kafka, Kinesis) keep order per lane and retry from the lowest failure;
    queues (SQS standard, RabbitMQ) do neither. ``stand_in_duplicates`` is how many extra deliveries
    the stand-in broker itself may add when several receives run at once.
    """

    kind: ClassVar[str]
    ordered: ClassVar[bool]
    stand_in_duplicates: ClassVar[int] = 0
    resource: str  # the topic, queue or stream: the key of what guarantee_handlers records
    lanes: int = 1

    @abstractmethod
    async def create(self, lanes: int = 1, *, destination_up: bool = True) -> None:
        """Create a fresh source (``lanes`` partitions or shards where the broker has them) and an
        on-failure destination, unavailable until :meth:`repair_destination` if not ``destination_up``."""

    @abstractmethod
    async def repair_destination(self) -> None:
        """Make the destination that ``create(destination_up=False)`` left unavailable work."""

    async def close(self) -> None:
        """Delete or release what :meth:`create` made, where the broker needs that."""
        return None

    @abstractmethod
    def connections(self) -> dict[str, Any]: ...

    @abstractmethod
    def source(self) -> dict[str, Any]: ...

    @abstractmethod
    def destination(self) -> dict[str, Any]: ...

    def mapping_defaults(self) -> dict[str, Any]:
        """Mapping keys every test of this broker needs."""
        return {}

    def config(self, handler: str, *, function: dict[str, Any] | None = None, **mapping: Any) -> Config:
        """Mapping ``m`` from the source to ``guarantee_handlers:<handler>``, failures to the
        destination; ``function`` and ``mapping`` add keys to the function and the mapping."""
        return mapping_config(
            self.connections(),
            self.source(),
            f"guarantee_handlers:{handler}",
            dlq=self.destination(),
            function=function,
            **{**self.mapping_defaults(), **mapping},
        )

    @abstractmethod
    async def produce(self, bodies: list[str]) -> list[Sent]:
        """Write one record per body, in order; record ``i`` goes to lane ``i % lanes``."""

    @abstractmethod
    async def unsettled(self) -> int:
        """How many written records the source has not committed, deleted or acked (or holds in a
        delay queue for a retry). Where this takes several reads (RabbitMQ), a message on its way
        between them can be missed: wait for retries to end (a success, a dead letter) first."""

    @abstractmethod
    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        """The failure records that reached the destination since the last call, parsed, once at
        least ``count`` did (at once for 0). Checks on the way the destination's own framing (keys,
        headers, attributes)."""

    @abstractmethod
    def check_source_info(self, info: dict[str, Any], sent: Sent) -> None:
        """Assert the ``source`` object of the failure record of the single record ``sent``."""

    @abstractmethod
    def check_record(self, record: dict[str, Any], sent: Sent) -> None:
        """Assert that ``record``, as an event or a failure record holds it, is ``sent`` with all the
        metadata the harness wrote (keys, headers, attributes, properties) in the source's format."""

    def check_redeliveries(self, alone: list[dict[str, Any]]) -> None:
        """Assert how the broker marked the attempts that held only the failing record (``alone``,
        the record as each attempt's event had it); streams retry in process and mark nothing."""
        return None
