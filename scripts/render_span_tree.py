"""Render the span tree of a poisoned batch as SVG, from a real run (for docs/observability.md).

    python scripts/render_span_tree.py docs/span-tree.svg

Needs a Kafka broker (KAFKA_BOOTSTRAP, default 127.0.0.1:9092; `python -m poller.devtools.standins start
kafka` gives one). Produces 16 records, the 6th of them poisoned, runs a mapping with bisect on and
one retry, collects the spans in memory and draws them as a waterfall, children under parents.
"""

from __future__ import annotations

import asyncio
import html
import os
import sys
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poller.app import App
from poller.clock import Clock
from poller.config import Config
from poller.observability.tracing import Telemetry


class QuickClock(Clock):
    """Backoff waits shortened to a tenth, so the picture is made in seconds."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / 10)


async def run(bootstrap: str) -> list[ReadableSpan]:
    topic = f"orders-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1), NewTopic(f"{topic}-dlq", 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    for i in range(16):
        await producer.send_and_wait(topic, b"poison" if i == 5 else b'{"order": %d}' % i, partition=0)
    await producer.stop()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = Config.model_validate(
        {
            "connections": {"kafka": {"type": "kafka", "bootstrap_servers": bootstrap}},
            "functions": {"orders": {"handler": "handlers.poison:handler"}},
            "destinations": {"dlq": {"type": "kafka", "connection": "kafka", "topic": f"{topic}-dlq"}},
            "mappings": {
                "orders-from-kafka": {
                    "function_name": "orders",
                    "source": {
                        "type": "kafka",
                        "connection": "kafka",
                        "topics": [topic],
                        "session_timeout_ms": 1000,
                        "heartbeat_interval_ms": 200,
                        "rebalance_timeout_ms": 1000,
                    },
                    "batch_size": 16,
                    "maximum_batching_window_in_seconds": 1,
                    "bisect_batch_on_function_error": True,
                    "maximum_retry_attempts": 1,
                    "destination_config": {"on_failure": {"destination": "dlq"}},
                }
            },
            "admin": {"port": 0},
        }
    )
    app = App(config, clock=QuickClock(), telemetry=Telemetry(tracer_provider=provider))
    task = asyncio.create_task(app.run())
    runner = app.runners["orders-from-kafka"]
    while runner.status.counts.dead_lettered + runner.status.counts.succeeded < 16:  # noqa: ASYNC110 - counters have no event
        await asyncio.sleep(0.1)
    app.stop()
    await task
    return list(exporter.get_finished_spans())


def render(spans: list[ReadableSpan]) -> str:
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent else None
        by_parent.setdefault(parent, []).append(span)
    ordered: list[tuple[int, ReadableSpan]] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(by_parent.get(parent, []), key=lambda s: s.start_time or 0):
            ordered.append((depth, span))
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    start = min(span.start_time or 0 for span in spans)
    end = max(span.end_time or 0 for span in spans)
    width, label_width, row = 1100, 430, 22
    scale = (width - label_width - 20) / max(1, end - start)
    rows = []
    for index, (depth, span) in enumerate(ordered):
        y = 30 + index * row
        x = label_width + ((span.start_time or 0) - start) * scale
        w = max(2.0, ((span.end_time or 0) - (span.start_time or 0)) * scale)
        failed = span.status.status_code.name == "ERROR"
        colour = (
            "#d9534f"
            if failed
            else {"CONSUMER": "#5b8def", "PRODUCER": "#f0ad4e"}.get(span.kind.name, "#5cb85c")
        )
        count = (span.attributes or {}).get("messaging.batch.message_count")
        label = f"{span.name}" + (f" [{count}]" if count and span.name.startswith("process") else "")
        rows.append(
            f'<text x="{10 + depth * 16}" y="{y + 14}" font-size="12">{html.escape(label)}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{colour}" rx="2"/>'
        )
    height = 50 + len(ordered) * row
    legend = (
        f'<text x="10" y="{height - 8}" font-size="11" fill="#555">blue: batch (CONSUMER) · green: invocation · '
        "red: failed invocation · orange: on-failure delivery (PRODUCER) · [n]: records in the batch</text>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="10" y="18" font-size="13" font-weight="bold">One poisoned batch of 16 records, '
        f"bisected down to the record and dead-lettered ({len(spans)} spans, one trace)</text>"
        + "".join(rows)
        + legend
        + "</svg>\n"
    )


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/span-tree.svg")
    spans = asyncio.run(run(os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")))
    target.write_text(render(spans))
    print(f"wrote {target} ({len(spans)} spans)")


if __name__ == "__main__":
    main()
