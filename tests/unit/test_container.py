"""docker-compose.yml, the Dockerfile and config/compose.yaml checked by structure: no Docker engine
runs here, so this is what keeps them from rotting."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from poller.config import AwsConnection, KafkaConnection, RabbitMQConnection
from poller.config.loader import load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_every_service_the_stack_needs_is_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"poller", "init", "kafka", "rabbitmq", "localstack", "jaeger"}


def test_images_are_pinned_to_versions(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "image" in service:
            image = service["image"]
            assert re.search(r":\d+\.\d+", image), f"{name}: image {image} is not pinned to a version"
        else:
            assert service["build"] == ".", f"{name}: neither an image nor this repository's Dockerfile"


def test_brokers_have_health_checks_and_the_poller_waits_for_them(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for broker in ("kafka", "rabbitmq", "localstack"):
        assert services[broker]["healthcheck"]["test"], broker
        assert services["init"]["depends_on"][broker] == {"condition": "service_healthy"}
    assert services["poller"]["depends_on"]["init"] == {"condition": "service_completed_successfully"}
    assert services["poller"]["healthcheck"]["test"]


def test_published_ports(compose: dict[str, Any]) -> None:
    def ports(service: str) -> set[str]:
        return {str(port).split(":")[-1] for port in compose["services"][service].get("ports", [])}

    assert {"16686", "4317", "4318"} <= ports("jaeger")
    assert "4566" in ports("localstack")
    assert "5672" in ports("rabbitmq")
    assert "8080" in ports("poller")


def test_traces_go_to_jaeger(compose: dict[str, Any]) -> None:
    environment = compose["services"]["poller"]["environment"]
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert compose["services"]["poller"]["stop_grace_period"] == "40s", "longer than the 30 s drain"


def test_compose_config_is_valid_and_points_at_compose_services(compose: dict[str, Any]) -> None:
    config = load_config(REPO / "config" / "compose.yaml")
    assert {mapping.source.type for mapping in config.mappings.values()} == {
        "kafka",
        "sqs",
        "kinesis",
        "rabbitmq",
    }
    services = set(compose["services"])
    for name, connection in config.connections.items():
        if isinstance(connection, KafkaConnection):
            hosts = [address.rsplit(":", 1)[0] for address in connection.bootstrap_servers.split(",")]
        elif isinstance(connection, RabbitMQConnection):
            hosts = [re.sub(r"^amqps?://([^@]*@)?", "", connection.url.reveal()).split(":")[0].split("/")[0]]
        else:
            assert isinstance(connection, AwsConnection)
            urls = [connection.endpoint_url or "", *connection.endpoint_urls.values()]
            hosts = [url.split("//")[1].split(":")[0] for url in urls if url]
        assert hosts, name
        assert set(hosts) <= services, f"connection {name} points at {hosts}, not at compose services"
    assert config.admin.host == "0.0.0.0", "the admin server must be reachable from outside the container"


def test_dockerfile_copies_paths_that_exist_and_runs_as_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.MULTILINE)
    assert "HEALTHCHECK" in dockerfile
    assert "/healthz" in dockerfile
    assert re.search(r'^ENTRYPOINT \["tini", "--", "poller"\]', dockerfile, re.MULTILINE), (
        "exec form under an init that reaps the environments' orphans and passes SIGTERM on to poller"
    )
    assert "install -y --no-install-recommends tini" in dockerfile
