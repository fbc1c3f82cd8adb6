"""deploy/kubernetes (SPEC section 16): the manifests validate against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields are errors) and the ScaledObject against KEDA's CRD
schema (as compiled by the npm package @kubernetes-models/keda); they fit together (probes, grace
period, names, labels); the ConfigMap's config loads; and every metric a KEDA query names is one that
a running poller exports, for the mapping and source type the query names."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import kubernetes_validate
import pytest
import yaml
from kinesis_helpers import aws_connection, create_stream, delete_created_streams, put
from support import KAFKA_TEST_GROUP_SETTINGS, create_topic, produce, running, unique_name, wait_for

from poller.config import Config, load_config
from poller.sources.kafka.source import KafkaSource
from poller.sources.kinesis.source import KinesisSource
from poller.sources.rabbitmq.source import RabbitMQSource
from poller.sources.sqs.source import SqsSource

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
KEDA_MODELS = "@kubernetes-models/keda@2.0.0"
# The source types whose lag each metric reports (SQS and RabbitMQ share the backlog metric).
LAG_METRIC: dict[str, set[str]] = {}
for _source, _kind in (
    (KafkaSource, "kafka"),
    (SqsSource, "sqs"),
    (RabbitMQSource, "rabbitmq"),
    (KinesisSource, "kinesis"),
):
    LAG_METRIC.setdefault(_source.lag_metric.name, set()).add(_kind)


def documents() -> dict[str, dict[str, Any]]:
    """Every object of the kustomization, by kind/name."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    objects: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((MANIFESTS / resource).read_text()):
            objects[f"{document['kind']}/{document['metadata']['name']}"] = document
    return objects


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    on_disk = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    assert [image["name"] for image in kustomization["images"]] == ["poller"]


@pytest.mark.parametrize("key", [key for key in documents() if not key.startswith("ScaledObject/")])
def test_each_manifest_validates_against_the_kubernetes_schema(key: str) -> None:
    kubernetes_validate.validate(documents()[key], KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module")
def keda_validator() -> Path:
    """A node script validating a ScaledObject with KEDA's CRD schema (installed once from npm)."""
    directory = REPO / ".brokers" / "npm-keda"
    package = directory / "node_modules" / "@kubernetes-models" / "keda"
    if not package.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            "npm",
            "install",
            "--prefix",
            str(directory),
            "--no-audit",
            "--no-fund",
            "--silent",
            KEDA_MODELS,
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.fail(f"cannot install {KEDA_MODELS} with npm (node and npm are needed): {exc}")
    script = directory / "validate.mjs"
    script.write_text(
        "import { ScaledObject } from '@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject';\n"
        "try { new ScaledObject(JSON.parse(process.argv[2])).validate(); console.log('valid'); }\n"
        "catch (error) { console.log(error.message); process.exit(1); }\n"
    )
    return script


def keda_validate(script: Path, document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(script), json.dumps(document)], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_scaled_object_validates_against_kedas_schema(keda_validator: Path) -> None:
    scaled = documents()["ScaledObject/poller"]
    result = keda_validate(keda_validator, scaled)
    assert result.returncode == 0, result.stdout + result.stderr
    # The validator is no rubber stamp: a wrong type and a missing trigger type are refused.
    broken = json.loads(json.dumps(scaled))
    broken["spec"]["minReplicaCount"] = "one"
    del broken["spec"]["triggers"][0]["type"]
    result = keda_validate(keda_validator, broken)
    assert result.returncode == 1
    assert "minReplicaCount must be integer" in result.stdout
    assert "triggers/0 must have required property type" in result.stdout


def test_the_manifests_fit_together() -> None:
    objects = documents()
    deployment = objects["Deployment/poller"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    drain_timeout = float(args[args.index("--drain-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > drain_timeout
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = objects["Service/poller"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["admin"]
    assert [port["name"] for port in container["ports"]] == ["admin"]
    secrets = {source["secretRef"]["name"] for source in container["envFrom"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert secrets | {volumes["tls"]["secret"]["secretName"]} <= {
        key.split("/", 1)[1] for key in objects if key.startswith("Secret/")
    }
    assert f"ConfigMap/{volumes['config']['configMap']['name']}" in objects
    config_path = args[args.index("-c") + 1]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == config_path
    scaled = objects["ScaledObject/poller"]
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "poller",
    }


def configmap_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The ConfigMap's poller.yaml, loaded as poller loads it, with the Secret's keys as environment."""
    text = documents()["ConfigMap/poller-config"]["data"]["poller.yaml"]
    for key, value in documents()["Secret/poller-credentials"]["stringData"].items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "poller.yaml"
    path.write_text(text)
    monkeypatch.chdir(REPO)  # the handlers package, as in the image's working directory
    return load_config(path)


def queries() -> list[tuple[str, list[str]]]:
    """(metric, mappings) of each KEDA trigger's query."""
    found = []
    for trigger in documents()["ScaledObject/poller"]["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        (metric,) = set(re.findall(r"\bpoller_[a-z_]+", query))
        (selector,) = re.findall(r'mapping=~?"([^"]+)"', query)
        found.append((metric, selector.split("|")))
    return found


def test_the_configmap_config_is_valid_and_the_queries_name_its_mappings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = configmap_config(tmp_path, monkeypatch)
    assert config.admin.host == "0.0.0.0"  # reachable by the probes and by Prometheus
    for metric, mappings in queries():
        for name in mappings:
            assert config.mappings[name].source.type in LAG_METRIC[metric], (metric, name)


def scrape_names(text: str) -> set[tuple[str, str]]:
    """(metric, mapping) of every sample in a Prometheus text exposition."""
    pairs = set()
    for line in text.splitlines():
        match = re.match(r'(poller_[a-z_]+)\{[^}]*mapping="([^"]+)"', line)
        if match:
            pairs.add((match[1], match[2]))
    return pairs


@pytest.mark.kafka
@pytest.mark.sqs
@pytest.mark.kinesis
@pytest.mark.rabbitmq
async def test_a_running_poller_exports_every_metric_the_scaled_object_queries(
    kafka_bootstrap: str, moto_endpoint: str, kinesis_endpoint: str, amqp_url: str, tmp_path: Path
) -> None:
    """The ConfigMap's mappings, run against the stand-ins under the same names; /metrics then has a
    sample of each queried metric for each queried mapping (Kafka reports lag once a partition has
    a commit: hence the record it handles first)."""
    topic, queue, stream, rabbit_queue = (
        unique_name(kind) for kind in ("topic", "queue", "stream", "rabbit")
    )
    await create_topic(kafka_bootstrap, topic, 2)
    await produce(kafka_bootstrap, topic, [(0, None, "x", None)])
    from aiobotocore.session import get_session

    async with get_session().create_client("sqs", region_name="us-east-1", endpoint_url=moto_endpoint) as sqs:
        await sqs.create_queue(QueueName=queue)
    await create_stream(kinesis_endpoint, stream, 1)
    await put(kinesis_endpoint, stream, [("k", b"x")])
    async with await aio_pika.connect(amqp_url) as amqp:
        await (await amqp.channel()).declare_queue(rabbit_queue, durable=True)
    config = Config.model_validate(
        {
            "connections": {
                "kafka": {"type": "kafka", "bootstrap_servers": kafka_bootstrap},
                "aws": {"type": "aws", "endpoint_url": moto_endpoint},
                "kinesis": aws_connection(kinesis_endpoint),
                "rabbit": {"type": "rabbitmq", "url": amqp_url},
            },
            "functions": {"fn": {"handler": "recorder:collect"}},
            "mappings": {
                "orders-from-kafka": {
                    "function_name": "fn",
                    "source": {
                        "type": "kafka",
                        "connection": "kafka",
                        "topics": [topic],
                        **KAFKA_TEST_GROUP_SETTINGS,
                    },
                },
                "orders-from-sqs": {
                    "function_name": "fn",
                    "source": {"type": "sqs", "connection": "aws", "queue": queue, "wait_time_seconds": 1},
                },
                "clicks-from-kinesis": {
                    "function_name": "fn",
                    "source": {"type": "kinesis", "connection": "kinesis", "stream": stream},
                    "starting_position": "LATEST",
                    "checkpoints": {"type": "sqlite", "path": str(tmp_path / "checkpoints.db")},
                },
                "payments-from-rabbitmq": {
                    "function_name": "fn",
                    "source": {"type": "rabbitmq", "connection": "rabbit", "queues": [rabbit_queue]},
                },
            },
            "admin": {"port": 0},
        }
    )
    wanted = {(metric, name) for metric, names in queries() for name in names}
    try:
        async with running(config) as app, aiohttp.ClientSession() as session:
            seen: set[tuple[str, str]] = set()

            async def exported() -> bool:
                async with session.get(f"http://127.0.0.1:{app.admin.port}/metrics") as response:
                    seen.update(scrape_names(await response.text()))
                return wanted <= seen

            try:
                await wait_for(exported, timeout=60, message=f"samples of {sorted(wanted)}")
            finally:
                print("exported:", sorted(seen))  # shown with a failure, which cannot name it in advance
    finally:
        await delete_created_streams()
        async with await aio_pika.connect(amqp_url) as amqp:
            await (await amqp.channel()).queue_delete(rabbit_queue)
