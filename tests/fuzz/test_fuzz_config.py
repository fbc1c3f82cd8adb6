"""The config loader under fuzzing (SPEC sections 3 and 9): whatever a config file holds (any bytes,
any text, YAML of any shape, the config's own keys in the wrong places, any environment), loading it
gives a Config or a ConfigError whose problems are one line each, and nothing else: no traceback,
no hang. The files in corpus/configs are replayed too: inputs that once broke the loader."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from poller.config import Config, load_config
from poller.errors import ConfigError

CONFIG_CORPUS = sorted((Path(__file__).parent / "corpus" / "configs").glob("*.yaml"))

# The vocabulary of real configs, so that structured inputs get deep into validation.
KEYS = [
    "connections", "functions", "destinations", "mappings", "admin", "type", "kafka", "rabbitmq",
    "aws", "sqs", "kinesis", "sns", "s3", "file", "bootstrap_servers", "url", "region", "endpoint_url",
    "endpoint_urls", "verify", "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
    "ssl_cafile", "ssl_certfile", "ssl_keyfile", "handler", "timeout", "memory_size", "environment",
    "function_name", "source", "connection", "topics", "queues", "queue", "stream", "batch_size",
    "starting_position", "starting_position_timestamp", "maximum_batching_window_in_seconds",
    "maximum_retry_attempts", "maximum_record_age_in_seconds", "destination_config", "on_failure",
    "destination", "filter_criteria", "filter", "pattern", "checkpoints", "tumbling_window_in_seconds",
    "parallelization_factor", "scaling_config", "maximum_concurrency", "function_response_types",
    "host", "port", "<<", "0", "",
]  # fmt: skip
SPECIAL_STRINGS = [
    "kafka", "rabbitmq", "aws", "sqs", "kinesis", "SASL_SSL", "PLAIN", "LATEST", "AT_TIMESTAMP",
    "amqp://u:p@h:5672/", "amqps://h:99999/", "mod:fn", "${X}", "${UNSET}", "${X:-d}",
    "2026-13-45T99:00:00Z", "ReportBatchItemFailures",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_STRINGS),
    st.text(max_size=20),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=30,
)
ENVIRONMENTS = st.dictionaries(
    st.sampled_from(["X", "UNSET", "KAFKA_BOOTSTRAP", "AMQP_URL"]),
    st.text(alphabet=string.printable + "\u2028é\x00", max_size=15),
    max_size=3,
)


def load(content: bytes, environ: dict[str, str] | None = None) -> None:
    """Load ``content`` as a config file: a Config, or a ConfigError of one-line problems."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzzed.yaml"
        path.write_bytes(content)
        try:
            config = load_config(path, environ=environ or {}, check_handlers=False)
        except ConfigError as error:
            problems = error.problems
        else:
            assert isinstance(config, Config)
            return
    assert problems, "a ConfigError names at least one problem"
    for problem in problems:
        assert problem.startswith(str(path)), problem
        assert "\n" not in problem, problem
        assert "Traceback" not in problem, problem


@given(st.binary(max_size=300))
def test_any_bytes_load_or_fail_cleanly(content: bytes) -> None:
    load(content)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300), ENVIRONMENTS)
def test_any_text_loads_or_fails_cleanly(text: str, environ: dict[str, str]) -> None:
    load(text.encode(), environ)


@given(DOCUMENTS, ENVIRONMENTS, st.sampled_from(["block", "flow"]))
def test_yaml_of_any_shape_loads_or_fails_cleanly(document: Any, environ: dict[str, str], style: str) -> None:
    text = yaml.safe_dump(document, default_flow_style=style == "flow", allow_unicode=True)
    load(text.encode(), environ)


def _config_like(draw: st.DrawFn) -> dict[str, Any]:
    """A config whose sections are right and whose entries are nearly right."""
    section = st.dictionaries(st.text(alphabet="abc-_.", min_size=1, max_size=4), DOCUMENTS, max_size=3)
    return {name: draw(section) for name in ("connections", "functions", "destinations", "mappings")} | {
        "admin": draw(st.one_of(DOCUMENTS, st.fixed_dictionaries({"port": SCALARS})))
    }


@given(st.composite(_config_like)())
def test_structured_but_wrong_configs_fail_cleanly(document: dict[str, Any]) -> None:
    load(yaml.safe_dump(document, allow_unicode=True).encode())


@pytest.mark.parametrize("path", CONFIG_CORPUS, ids=[path.name for path in CONFIG_CORPUS])
def test_the_config_corpus_loads_or_fails_cleanly(path: Path) -> None:
    load(path.read_bytes(), {"X": "value"})
