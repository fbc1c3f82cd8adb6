"""What a reload changes: a mapping restarts only when something it reads from or writes to
changed; a changed function is swapped under a running mapping."""

from __future__ import annotations

from typing import Any

from poller.config import Config
from poller.config.diff import diff


def config(**changes: Any) -> Config:
    document: dict[str, Any] = {
        "connections": {
            "k": {"type": "kafka", "bootstrap_servers": "a:9092"},
            "aws": {"type": "aws"},
        },
        "functions": {
            "fn": {"handler": "handlers.echo:handler"},
            "other": {"handler": "handlers.echo:handler"},
        },
        "destinations": {"dlq": {"type": "sqs", "connection": "aws", "queue": "dlq"}},
        "mappings": {
            "a": {"function_name": "fn", "source": {"type": "kafka", "connection": "k", "topics": ["a"]}},
            "b": {
                "function_name": "fn",
                "source": {"type": "kafka", "connection": "k", "topics": ["b"]},
                "destination_config": {"on_failure": {"destination": "dlq"}},
            },
        },
    }
    for path, value in changes.items():
        node = document
        *parents, last = path.split("__")
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return Config.model_validate(document)


def test_an_identical_config_changes_nothing() -> None:
    changes = diff(config(), config())
    assert changes.empty
    assert changes.unchanged == {"a", "b"}


def test_added_removed_and_changed_mappings() -> None:
    new = config(
        mappings__c={"function_name": "fn", "source": {"type": "kafka", "connection": "k", "topics": ["c"]}},
        mappings__a=None,
        mappings__b__batch_size=5,
    )
    changes = diff(config(), new)
    assert (changes.added, changes.removed, changes.changed, changes.unchanged) == (
        {"c"},
        {"a"},
        {"b"},
        set(),
    )


def test_a_mapping_restarts_when_its_connection_or_destination_changes_not_when_its_function_does() -> None:
    changes = diff(config(), config(destinations__dlq__queue="dlq-2"))
    assert changes.changed == {"b"}
    assert changes.unchanged == {"a"}
    changes = diff(config(), config(connections__k__bootstrap_servers="b:9092"))
    assert changes.changed == {"a", "b"}
    changes = diff(config(), config(functions__fn__timeout=30))
    assert changes.changed == set()
    assert changes.functions_changed == {"fn"}
    changes = diff(config(), config(mappings__a__function_name="other"))
    assert changes.changed == {"a"}, "another function is another mapping"


def test_admin_changes_wait_for_a_restart() -> None:
    assert diff(config(), config(admin={"port": 9})).admin_changed
