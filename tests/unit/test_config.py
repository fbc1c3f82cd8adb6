"""Loading and validating config files: every problem at once, one line each, with file, line and key path."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from poller.config.loader import default_config_path, load_config
from poller.config.schema import main as schema_main
from poller.config.schema import render_schema
from poller.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
HANDLER_MODULE = "poller_test_config_echo"

VALID = """\
connections:
  kafka: {type: kafka, bootstrap_servers: "${KAFKA_BOOTSTRAP:-localhost:9092}"}
  aws: {type: aws, region: us-east-1}
functions:
  orders:
    handler: HANDLER
destinations:
  failed: {type: file, path: failed.jsonl}
mappings:
  orders-from-kafka:
    function_name: orders
    source: {type: kafka, connection: kafka, topics: [orders]}
    destination_config: {on_failure: {destination: failed}}
"""


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The loader puts the working directory on sys.path for good; keep that inside each test.
    monkeypatch.setattr(sys, "path", [*sys.path])


@pytest.fixture
def handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A handler that can be imported, written into tmp_path (handlers/ is another module's work)."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / f"{HANDLER_MODULE}.py").write_text("def handler(event, context):\n    return event\n")
    monkeypatch.syspath_prepend(str(modules))
    sys.modules.pop(HANDLER_MODULE, None)
    yield f"{HANDLER_MODULE}:handler"
    sys.modules.pop(HANDLER_MODULE, None)


def write(tmp_path: Path, text: str, name: str = "mappings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path, *, check_handlers: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={}, check_handlers=check_handlers)
    assert str(raised.value) == "\n".join(raised.value.problems)
    return raised.value.problems


def test_valid_config_loads_with_aws_defaults(tmp_path: Path, handler: str) -> None:
    path = write(tmp_path, VALID.replace("HANDLER", handler))

    config = load_config(path, environ={})

    mapping = config.mappings["orders-from-kafka"]
    assert mapping.effective_batch_size == 100
    assert mapping.effective_batching_window == 0.5
    assert mapping.maximum_record_age_in_seconds == 86400
    assert mapping.maximum_retry_attempts == -1
    assert mapping.starting_position == "TRIM_HORIZON"
    assert mapping.enabled is True
    assert mapping.on_failure_destination == "failed"
    assert config.functions["orders"].timeout == 3
    assert config.connections["kafka"].type == "kafka"
    assert config.connections["kafka"].bootstrap_servers == "localhost:9092"
    assert config.admin.port == 8080


def test_unknown_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        mappings:
          orders-from-kafka:
            function_name: orders
            source: {type: kafka, connection: kafka, topics: [orders]}
            batchsize: 10
        """,
    )

    assert problems(path) == [f"{path}:5: mappings.orders-from-kafka.batchsize: unknown key 'batchsize'"]


def test_unknown_key_inside_a_tagged_union_has_the_users_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        mappings:
          m:
            function_name: orders
            source:
              type: kafka
              connection: kafka
              topic: orders
        """,
    )

    assert problems(path) == [
        f"{path}:4: mappings.m.source.topics: missing required key 'topics'",
        f"{path}:7: mappings.m.source.topic: unknown key 'topic'",
    ]


def test_wrong_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        functions:
          orders:
            handler: handlers.orders:handler
            timeout: ten
        """,
    )

    [problem] = problems(path, check_handlers=False)
    assert problem.startswith(f"{path}:4: functions.orders.timeout: Input should be a valid integer")


def test_unknown_connection_type(tmp_path: Path) -> None:
    path = write(tmp_path, "connections:\n  k: {type: kafak, bootstrap_servers: b}\n")

    assert problems(path) == [
        f"{path}:2: connections.k.type: unknown type 'kafak'; expected one of 'kafka', 'rabbitmq', 'aws'"
    ]


def test_missing_handler_module_of_the_default_runtime_is_found_without_importing(tmp_path: Path) -> None:
    path = write(tmp_path, "functions:\n  orders:\n    handler: no_such_module_for_poller_tests:handler\n")

    assert problems(path) == [
        f"{path}:3: functions.orders.handler: no module 'no_such_module_for_poller_tests' under "
        f"{Path.cwd().resolve()}, on PYTHONPATH or installed"
    ]


def test_default_runtime_handler_module_is_found_but_never_run(tmp_path: Path, handler: str) -> None:
    # The environment imports it at its first init; validation looks at files only (a missing
    # callable shows there, as Runtime.HandlerNotFound, as on Lambda).
    path = write(tmp_path, f"functions:\n  orders:\n    handler: {HANDLER_MODULE}:missing\n")

    assert load_config(path, environ={}).functions["orders"].handler == f"{HANDLER_MODULE}:missing"
    assert HANDLER_MODULE not in sys.modules


def test_missing_inline_handler_module(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "functions:\n  orders:\n    runtime: inline\n    handler: no_such_module_for_poller_tests:handler\n",
    )

    [problem] = problems(path)
    assert problem.startswith(
        f"{path}:4: functions.orders.handler: cannot import module 'no_such_module_for_poller_tests'"
    )


def test_inline_handler_without_the_callable(tmp_path: Path, handler: str) -> None:
    path = write(
        tmp_path, f"functions:\n  orders:\n    runtime: inline\n    handler: {HANDLER_MODULE}:missing\n"
    )

    assert problems(path) == [
        f"{path}:4: functions.orders.handler: module {HANDLER_MODULE!r} has no attribute 'missing'"
    ]


def test_handlers_are_not_imported_without_check_handlers(tmp_path: Path, handler: str) -> None:
    path = write(tmp_path, VALID.replace("HANDLER", "no_such_module_for_poller_tests:handler"))

    config = load_config(path, environ={}, check_handlers=False)

    assert config.functions["orders"].handler == "no_such_module_for_poller_tests:handler"


def test_handlers_are_found_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As under the console script, whose sys.path holds its bin directory, not the working directory.
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "poller_test_cwd_handler.py").write_text("def handler(event, context):\n    return 1\n")
    monkeypatch.delitem(sys.modules, "poller_test_cwd_handler", raising=False)
    path = write(tmp_path, VALID.replace("HANDLER", "poller_test_cwd_handler:handler"))

    try:
        load_config(path, environ={})
    finally:
        sys.modules.pop("poller_test_cwd_handler", None)


def test_inline_handler_imports_with_its_function_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("POLLER_TEST_TABLE", raising=False)
    (tmp_path / "poller_test_env_handler.py").write_text(
        "import os\nTABLE = os.environ['POLLER_TEST_TABLE']\ndef handler(event, context):\n    return TABLE\n"
    )
    path = write(
        tmp_path,
        """\
        functions:
          orders:
            runtime: inline
            handler: poller_test_env_handler.handler
            environment: {POLLER_TEST_TABLE: orders}
        """,
    )

    try:
        load_config(path, environ={})
        assert sys.modules["poller_test_env_handler"].TABLE == "orders"
    finally:
        sys.modules.pop("poller_test_env_handler", None)
    assert "POLLER_TEST_TABLE" not in os.environ


def test_duplicate_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        functions:
          orders: {handler: a.b:handler}
          payments: {handler: a.b:handler}
          orders: {handler: a.c:handler, timeout: 5}
        """,
    )

    assert problems(path, check_handlers=False) == [
        f"{path}:4: functions.orders: duplicate key 'orders' (first on line 2)"
    ]


def test_duplicate_key_inside_an_entry(tmp_path: Path) -> None:
    path = write(tmp_path, "functions:\n  orders:\n    handler: a:b\n    timeout: 3\n    timeout: 4\n")

    assert problems(path, check_handlers=False) == [
        f"{path}:5: functions.orders.timeout: duplicate key 'timeout' (first on line 4)"
    ]


def test_undefined_environment_variable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        # ${ONLY_IN_A_COMMENT}
        connections:
          kafka: {type: kafka, bootstrap_servers: "${KAFKA_BOOTSTRAP}"}
        """,
    )

    # The empty value left in its place is not reported as a second problem.
    assert problems(path) == [
        f"{path}:3: connections.kafka.bootstrap_servers: environment variable 'KAFKA_BOOTSTRAP' is not set and has no default"
    ]


def test_undefined_environment_variables_in_a_flow_list(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        mappings:
          m:
            function_name: orders
            source: {type: kafka, connection: kafka, topics: [${FIRST}, "x-${SECOND}"]}
            bisect_batch_on_function_error: sometimes
        """,
    )

    found = problems(path, check_handlers=False)

    assert found[:2] == [
        f"{path}:4: mappings.m.source.topics[0]: environment variable 'FIRST' is not set and has no default",
        f"{path}:4: mappings.m.source.topics[1]: environment variable 'SECOND' is not set and has no default",
    ]
    assert found[2].startswith(
        f"{path}:5: mappings.m.bisect_batch_on_function_error: Input should be a valid boolean"
    )
    assert len(found) == 3


def test_environment_value_with_a_line_break_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "connections:\n  k: {type: kafka, bootstrap_servers: '${SERVERS}'}\n")

    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={"SERVERS": "a:9092\nb:9092"})

    assert raised.value.problems == [
        f"{path}:2: connections.k.bootstrap_servers: environment variable 'SERVERS' holds a line break"
    ]


def test_environment_variables_and_defaults(tmp_path: Path, handler: str) -> None:
    text = VALID.replace("HANDLER", handler).replace("topics: [orders]", "topics: [${TOPIC:-orders}]")
    text += "    batch_size: ${BATCH_SIZE}\n"
    path = write(tmp_path, text)

    defaults = load_config(path, environ={"BATCH_SIZE": "7", "KAFKA_BOOTSTRAP": ""})
    assert defaults.connections["kafka"].bootstrap_servers == "localhost:9092"  # type: ignore[union-attr]
    assert defaults.mappings["orders-from-kafka"].source.topics == ["orders"]
    assert defaults.mappings["orders-from-kafka"].batch_size == 7

    chosen = load_config(path, environ={"BATCH_SIZE": "9", "KAFKA_BOOTSTRAP": "broker:9093", "TOPIC": "t"})
    assert chosen.connections["kafka"].bootstrap_servers == "broker:9093"  # type: ignore[union-attr]
    assert chosen.mappings["orders-from-kafka"].source.topics == ["t"]


def test_environment_uses_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLER_TEST_BOOTSTRAP", "from-env:9092")
    path = write(
        tmp_path, "connections:\n  k: {type: kafka, bootstrap_servers: '${POLLER_TEST_BOOTSTRAP}'}\n"
    )

    config = load_config(path)

    assert config.connections["k"].bootstrap_servers == "from-env:9092"  # type: ignore[union-attr]


def test_every_problem_at_once_with_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        connections:
          kafka: {type: kafka, bootstrap_servers: "${LONG_VARIABLE_NAME_THAT_IS_SET}", client_id: "${NOT_SET}"}
        functions:
          orders:
            handler: no_such_module_for_poller_tests:handler
            timeout: 1000
          orders:
            handler: no_such_module_for_poller_tests:handler
        mappings:
          orders-from-kafka:
            function_name: orders
            source: {type: kafka, connection: kafka, topics: [orders]}
            batchsize: 10
            maximum_record_age_in_seconds: 30
          clicks:
            function_name: orders
            starting_position: SOMETIMES
        """,
    )

    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={"LONG_VARIABLE_NAME_THAT_IS_SET": "x"})

    found = raised.value.problems
    assert found[:4] == [
        f"{path}:2: connections.kafka.client_id: environment variable 'NOT_SET' is not set and has no default",
        f"{path}:7: functions.orders: duplicate key 'orders' (first on line 4)",
        f"{path}:8: functions.orders.handler: no module 'no_such_module_for_poller_tests' under "
        f"{Path.cwd().resolve()}, on PYTHONPATH or installed",
        f"{path}:13: mappings.orders-from-kafka.batchsize: unknown key 'batchsize'",
    ]
    assert found[4] == (
        f"{path}:14: mappings.orders-from-kafka.maximum_record_age_in_seconds: "
        "must be -1 (no limit) or between 60 and 604800"
    )
    assert found[5] == f"{path}:15: mappings.clicks.source: missing required key 'source'"
    assert found[6].startswith(
        f"{path}:17: mappings.clicks.starting_position: Input should be 'TRIM_HORIZON'"
    )
    assert len(found) == 7


def test_maximum_record_age_limits(tmp_path: Path, handler: str) -> None:
    valid = VALID.replace("HANDLER", handler)
    for age in (-1, 60, 604800):
        path = write(tmp_path, valid + f"    maximum_record_age_in_seconds: {age}\n")
        assert (
            load_config(path, environ={}).mappings["orders-from-kafka"].maximum_record_age_in_seconds == age
        )

    path = write(tmp_path, valid + "    maximum_record_age_in_seconds: 30\n")
    assert problems(path) == [
        f"{path}:14: mappings.orders-from-kafka.maximum_record_age_in_seconds: "
        "must be -1 (no limit) or between 60 and 604800"
    ]


def test_at_timestamp_needs_a_timestamp(tmp_path: Path, handler: str) -> None:
    valid = VALID.replace("HANDLER", handler)
    path = write(tmp_path, valid + "    starting_position: AT_TIMESTAMP\n")
    assert problems(path) == [
        f"{path}:10: mappings.orders-from-kafka: "
        "starting_position_timestamp is required with AT_TIMESTAMP, and only with it"
    ]

    path = write(
        tmp_path,
        valid
        + "    starting_position: AT_TIMESTAMP\n    starting_position_timestamp: '2024-05-01T12:00:00Z'\n",
    )
    mapping = load_config(path, environ={}).mappings["orders-from-kafka"]
    assert mapping.starting_position_timestamp == datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_reference_errors(tmp_path: Path, handler: str) -> None:
    path = write(
        tmp_path,
        f"""\
        connections:
          aws: {{type: aws}}
        functions:
          orders: {{handler: "{handler}"}}
        destinations:
          dlq: {{type: kafka, connection: aws, topic: dlq}}
        mappings:
          a:
            function_name: payments
            source: {{type: kafka, connection: nowhere, topics: [t]}}
            destination_config:
              on_failure: {{destination: missing-dlq}}
          b:
            function_name: orders
            source: {{type: kafka, connection: aws, topics: [t]}}
        """,
    )

    assert problems(path) == [
        f"{path}:6: destinations.dlq.connection: connection 'aws' is of type aws, not kafka",
        f"{path}:9: mappings.a.function_name: unknown function 'payments'",
        f"{path}:10: mappings.a.source.connection: unknown connection 'nowhere'",
        f"{path}:12: mappings.a.destination_config.on_failure.destination: unknown destination 'missing-dlq'",
        f"{path}:15: mappings.b.source.connection: connection 'aws' is of type aws, not kafka",
    ]


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "functions:\n  orders:\n    handler: [a, b\n    timeout: 3\n")

    [problem] = problems(path)
    assert problem.startswith(f"{path}:4: invalid YAML: ")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- connections\n- functions\n")

    [problem] = problems(path)
    assert problem.startswith(f"{path}:1: the top level must be a mapping")
    assert problem.endswith("found a list")


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    assert problems(path) == [f"{path}: cannot read the config file: No such file or directory"]


def test_default_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLLER_CONFIG", raising=False)
    assert default_config_path() == "config/mappings.yaml"
    monkeypatch.setenv("POLLER_CONFIG", "/etc/poller.yaml")
    assert default_config_path() == "/etc/poller.yaml"


def test_schema_file_is_current() -> None:
    checked_in = (REPO / "config" / "schema.json").read_text(encoding="utf-8")

    assert checked_in == render_schema(), "config/schema.json is stale: run python -m poller.config.schema"


def test_schema_check_reports_a_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"

    assert schema_main(["--check", "--path", str(path)]) == 1
    assert schema_main(["--path", str(path)]) == 0
    assert schema_main(["--check", "--path", str(path)]) == 0
    path.write_text(path.read_text().replace("poller configuration", "old title"))
    assert schema_main(["--check", "--path", str(path)]) == 1


def test_filter_criteria_take_json_text_and_yaml_mappings(tmp_path: Path, handler: str) -> None:
    path = write(
        tmp_path,
        VALID.replace("HANDLER", handler)
        + """\
    filter_criteria:
      filter:
        - pattern: '{"value": {"kind": ["order"], "amount": [{"numeric": [">", 100]}]}}'
        - pattern: {partition: [0]}
""",
    )
    mapping = load_config(path, environ={}).mappings["orders-from-kafka"]
    assert len(mapping.filters) == 2


def test_an_invalid_filter_pattern_names_the_mapping_the_filter_and_the_problem(
    tmp_path: Path, handler: str
) -> None:
    path = write(
        tmp_path,
        VALID.replace("HANDLER", handler)
        + """\
    filter_criteria:
      filter:
        - pattern: '{"value": {"kind": ["order"]}}'
        - pattern: '{"value": {"amount": [{"numeric": [">"]}]}}'
""",
    )
    [problem] = problems(path)
    assert problem.startswith(
        f"{path}:14: mappings.orders-from-kafka.filter_criteria: filter 2: value.amount: "
    )
    assert "numeric" in problem


def test_more_than_five_filters_and_plain_rules_on_kinesis_data_are_refused(
    tmp_path: Path, handler: str
) -> None:
    six = "".join(f"        - pattern: '{{\"partition\": [{i}]}}'\n" for i in range(6))
    path = write(tmp_path, VALID.replace("HANDLER", handler) + "    filter_criteria:\n      filter:\n" + six)
    [problem] = problems(path)
    assert "mappings.orders-from-kafka.filter_criteria.filter: " in problem
    assert "at most 5 items" in problem
    kinesis = VALID.replace("HANDLER", handler).replace(
        "source: {type: kafka, connection: kafka, topics: [orders]}",
        "source: {type: kinesis, connection: aws, stream: clicks}",
    )
    path = write(tmp_path, kinesis + '    filter_criteria: {filter: [{pattern: \'{"data": ["plain"]}\'}]}\n')
    [problem] = problems(path)
    assert "filter 1: data: this source's data is matched as JSON only" in problem


def test_tumbling_windows_are_checked_against_what_they_cannot_be_combined_with(
    tmp_path: Path, handler: str
) -> None:
    valid = VALID.replace("HANDLER", handler)
    path = write(tmp_path, valid + "    tumbling_window_in_seconds: 900\n")
    assert load_config(path, environ={}).mappings["orders-from-kafka"].tumbling_window_in_seconds == 900
    path = write(
        tmp_path, valid + "    tumbling_window_in_seconds: 901\n    bisect_batch_on_function_error: true\n"
    )
    [too_long] = problems(path)
    assert "mappings.orders-from-kafka.tumbling_window_in_seconds: " in too_long
    assert "less than or equal to 900" in too_long
    path = write(
        tmp_path, valid + "    tumbling_window_in_seconds: 60\n    bisect_batch_on_function_error: true\n"
    )
    assert problems(path) == [
        f"{path}:14: mappings.orders-from-kafka.tumbling_window_in_seconds: "
        "cannot be combined with bisect_batch_on_function_error"
    ]
    kinesis = valid.replace(
        "source: {type: kafka, connection: kafka, topics: [orders]}",
        "source: {type: kinesis, connection: aws, stream: clicks}",
    )
    path = write(tmp_path, kinesis + "    tumbling_window_in_seconds: 60\n    parallelization_factor: 2\n")
    [combined] = problems(path)
    assert "cannot be combined with parallelization_factor above 1" in combined
    sqs = valid.replace(
        "source: {type: kafka, connection: kafka, topics: [orders]}",
        "source: {type: sqs, connection: aws, queue: orders}",
    )
    path = write(tmp_path, sqs + "    tumbling_window_in_seconds: 60\n")
    [wrong_source] = problems(path)
    assert "applies to kinesis and kafka sources only" in wrong_source
    path = write(
        tmp_path,
        valid + "    tumbling_window_in_seconds: 60\n    checkpoints: {type: sqlite, path: w.db}\n",
    )
    assert load_config(path, environ={}).mappings["orders-from-kafka"].checkpoints is not None
