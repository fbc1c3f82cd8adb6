"""What a reload changes (SPEC section 16): two configs compared, mapping by mapping. Pure.

A mapping is unchanged, and keeps running without a pause, when its own settings are equal and so
is everything it reads from and writes to: its source's connection, its on-failure destination and
that destination's connection, and the connection of its checkpoint store. Its function may change
all the same: the function is swapped under the running mapping (its in-flight invocations finish
on the old one). A function whose ``function_url`` alone changed is not a changed function: its
listener restarts, its environments stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from poller.config.models import Config, DynamoDBCheckpoints, Mapping


@dataclass(frozen=True)
class ConfigDiff:
    """Mapping and function names, by what a reload does with them."""

    added: frozenset[str] = field(default_factory=frozenset)  # start
    removed: frozenset[str] = field(default_factory=frozenset)  # drain and stop
    changed: frozenset[str] = field(default_factory=frozenset)  # drain, then start anew
    unchanged: frozenset[str] = field(default_factory=frozenset)  # keep running
    functions_changed: frozenset[str] = field(default_factory=frozenset)  # swap under their mappings
    function_urls_changed: frozenset[str] = field(default_factory=frozenset)  # restart their listeners
    admin_changed: bool = False  # takes a restart: the admin server keeps its address

    @property
    def empty(self) -> bool:
        return not (
            self.added or self.removed or self.changed or self.functions_changed or self.function_urls_changed
        )


def diff(old: Config, new: Config) -> ConfigDiff:
    before, after = set(old.mappings), set(new.mappings)
    both = before & after
    changed = {
        name for name in both if _footprint(old, old.mappings[name]) != _footprint(new, new.mappings[name])
    }
    kept = set(old.functions) & set(new.functions)
    functions = {
        name
        for name in kept
        if old.functions[name].model_dump(exclude={"function_url"})
        != new.functions[name].model_dump(exclude={"function_url"})
    }
    urls = {name for name in kept if old.functions[name].function_url != new.functions[name].function_url}
    return ConfigDiff(
        added=frozenset(after - before),
        removed=frozenset(before - after),
        changed=frozenset(changed),
        unchanged=frozenset(both - changed),
        functions_changed=frozenset(functions),
        function_urls_changed=frozenset(urls),
        admin_changed=old.admin != new.admin,
    )


def _footprint(config: Config, mapping: Mapping) -> tuple[object, ...]:
    """Everything a running mapping depends on, but its function."""
    destination_name = mapping.on_failure_destination
    destination = config.destinations.get(destination_name) if destination_name else None
    connections = [mapping.source.connection]
    if destination is not None:
        connections.append(getattr(destination, "connection", ""))  # a file destination has none
    if isinstance(mapping.checkpoints, DynamoDBCheckpoints):
        connections.append(mapping.checkpoints.connection)
    return (
        mapping,
        destination,
        tuple(config.connections.get(name) for name in connections if name),
        # A function of another name is another function: the mapping restarts with it.
        mapping.function_name in config.functions,
    )
