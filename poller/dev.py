"""``poller dev``: local stand-in brokers, the example topics, and the service on config/dev.yaml.

A stand-in starts only where the config points at a loopback address whose port is closed, so a
broker you already run is used as it is. What this command started, it stops on exit.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from poller.config import Config, KafkaConnection, KafkaDestination, KafkaSource
from poller.standins import LOOPBACK, StandIn, port_open, start_kafka

log = logging.getLogger(__name__)

DEV_PARTITIONS = 3
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", LOOPBACK}


def run_dev(config_path: str, drain_timeout: float) -> int:
    from poller.cli import run_service
    from poller.config_loader import load_config

    config = load_config(config_path)
    started = start_stand_ins(config)
    try:
        asyncio.run(create_example_resources(config))
        return run_service(config, drain_timeout)
    finally:
        for stand_in in started:
            log.info("stopping the %s stand-in", stand_in.name)
            stand_in.stop()


def start_stand_ins(config: Config) -> list[StandIn]:
    started: list[StandIn] = []
    for connection in config.connections.values():
        if isinstance(connection, KafkaConnection):
            for address in connection.bootstrap_servers.split(","):
                host, _, port = address.strip().rpartition(":")
                if host in _LOOPBACK_HOSTS and port.isdigit() and not port_open(LOOPBACK, int(port)):
                    stand_in = start_kafka(int(port))
                    if stand_in is not None:
                        log.info("started the Kafka stand-in (tansu) on %s:%s", LOOPBACK, port)
                        started.append(stand_in)
    return started


async def create_example_resources(config: Config) -> None:
    """Create every topic the mappings read and the destinations write, if missing."""
    topics: dict[str, set[str]] = {}
    for mapping in config.mappings.values():
        if isinstance(mapping.source, KafkaSource):
            topics.setdefault(mapping.source.connection, set()).update(mapping.source.topics)
    for destination in config.destinations.values():
        if isinstance(destination, KafkaDestination):
            topics.setdefault(destination.connection, set()).add(destination.topic)
    for connection_name, names in topics.items():
        connection = config.connections[connection_name]
        assert isinstance(connection, KafkaConnection)
        admin = AIOKafkaAdminClient(bootstrap_servers=connection.bootstrap_servers)
        await admin.start()
        try:
            for name in sorted(names):
                try:
                    await admin.create_topics([NewTopic(name, DEV_PARTITIONS, 1)])
                    log.info("created topic %s", name)
                except TopicAlreadyExistsError:
                    pass
        finally:
            await admin.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m poller.dev create -c FILE``: create the resources a config names, then exit
    (the init step of docker-compose.yml, against real brokers)."""
    import argparse

    from poller.config_loader import load_config
    from poller.errors import ConfigError
    from poller.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m poller.dev")
    parser.add_argument("command", choices=["create"])
    parser.add_argument("-c", "--config", default="config/dev.yaml")
    args = parser.parse_args(argv)
    configure_logging("text")
    try:
        config = load_config(args.config, check_handlers=False)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    asyncio.run(create_example_resources(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
