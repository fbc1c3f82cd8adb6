"""Send example records to a Kafka topic, or print what a topic holds (for the README's tour).

python scripts/produce.py orders --count 100 --poison-at 42
python scripts/produce.py orders-dlq --read
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def produce(bootstrap: str, topic: str, count: int, poison_at: int | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            value = b"poison" if i == poison_at else json.dumps({"orderId": i}).encode()
            await producer.send_and_wait(topic, value, key=f"order-{i}".encode(), partition=0)
    finally:
        await producer.stop()
    print(f"sent {count} records to {topic}")


async def read(bootstrap: str, topic: str) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
        for messages in batches.values():
            for message in messages:
                headers = {name: data.decode(errors="replace") for name, data in message.headers}
                print(
                    json.dumps(
                        {"key": message.key and message.key.decode(errors="replace"), "headers": headers}
                    )
                )
                print(json.dumps(json.loads(message.value), indent=2))
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("topic")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--poison-at", type=int, default=None, help="send b'poison' at this index")
    parser.add_argument("--read", action="store_true", help="print the topic's records instead")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    args = parser.parse_args()
    if args.read:
        asyncio.run(read(args.bootstrap, args.topic))
    else:
        asyncio.run(produce(args.bootstrap, args.topic, args.count, args.poison_at))


if __name__ == "__main__":
    main()
