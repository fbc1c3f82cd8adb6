"""Lambda filter criteria (SPEC section 14): which records of a batch reach the handler.

A pattern is EventBridge's event-pattern syntax, as Lambda documents it for event source mappings
(https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html), compiled once by
:func:`compile_pattern` (the grammar and its checks are in ``filter_compile``). Up to five patterns
make a :class:`FilterCriteria`; a record is delivered when any of them matches it.

A pattern does not see the event record itself but a :class:`RecordView` of it
(:func:`record_view`): a shallow copy in which the source's data field is decoded from base64 and
parsed as JSON where it is JSON. The record that the handler receives is never changed, nor
re-serialised. Which field that is, and what plain text means, differs per source
(:class:`FilterField`).

Matching follows AWS's engine (aws/event-ruler) where the recorded cases leave a choice: keys are
joined with dots on both sides; an array in the record matches when any element does; a leaf that
is an object or an empty array is absent; and the values that satisfy a pattern's fields must come
from the same element of an array of objects (event-ruler's ``rulesForJSONEvent``). How one branch
of a pattern is matched against a view is in ``filter_match``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import pybase64

from poller.engine.filter_compile import (
    MAX_PATTERN_LENGTH,
    Branch,
    FilterPatternError,
    check_mapping,
    compile_branches,
    parse_text,
)
from poller.engine.filter_match import Field, Probe, Walk, branch_matches, prober, walker

__all__ = [
    "FILTER_FIELDS",
    "KAFKA_FILTER_FIELD",
    "KINESIS_FILTER_FIELD",
    "MAX_FILTERS",
    "MAX_PATTERN_LENGTH",
    "RABBITMQ_FILTER_FIELD",
    "SQS_FILTER_FIELD",
    "FilterCriteria",
    "FilterField",
    "FilterPatternError",
    "Pattern",
    "RecordView",
    "compile_pattern",
    "record_view",
]

MAX_FILTERS = 5  # Lambda's default quota of filters per event source mapping

DataFormat = Literal["json", "text", "none"]


@dataclass(frozen=True, slots=True)
class FilterField:
    """Where a source's record carries its data, and how a pattern sees it.

    ``name`` is the data key of the pattern (``body``, ``data``, ``value``); ``base64`` whether the
    record holds it base64-encoded; ``plain_text`` whether data that is not JSON is matched as a
    string by rules on ``name`` itself (otherwise no rule on ``name`` matches it); ``within`` the
    key of the record's object that the pattern sees, when it is not the record itself."""

    name: str
    base64: bool
    plain_text: bool
    within: str | None = None


# https://docs.aws.amazon.com/lambda/latest/dg/with-sqs-filtering.html: a plain-text body is
# matched by string rules on "body"; a JSON body by object rules on it.
SQS_FILTER_FIELD = FilterField("body", base64=False, plain_text=True)
# Kinesis: the pattern sees the record's "kinesis" object, so that "data" (decoded) and the metadata
# ("partitionKey", ...) are top-level keys of the pattern: AWS's examples are {"data": {...}} and
# {"partitionKey": ["1"], "data": {...}} (with-kinesis-filtering.html; invocation-eventfiltering.html
# in awsdocs/aws-lambda-developer-guide at 4c88540; EventBridge Pipes' filtering page shows the same
# record), and LocalStack's AWS-validated test filters on {"data": {"event_type": [...]}}. Data that
# is not JSON matches no rule on "data", and a plain rule on "data" is rejected at creation.
KINESIS_FILTER_FIELD = FilterField("data", base64=True, plain_text=False, within="kinesis")
# Kafka and Amazon MQ: the value is UTF-8 text, JSON or plain (AWS's example filters a plain value
# with {"value": [{"anything-but": ["error"]}]}, kafka-filtering.html); not UTF-8: only metadata.
KAFKA_FILTER_FIELD = FilterField("value", base64=True, plain_text=True)
RABBITMQ_FILTER_FIELD = FilterField("data", base64=True, plain_text=True)
FILTER_FIELDS: Mapping[str, FilterField] = {
    "sqs": SQS_FILTER_FIELD,
    "kinesis": KINESIS_FILTER_FIELD,
    "kafka": KAFKA_FILTER_FIELD,
    "rabbitmq": RABBITMQ_FILTER_FIELD,
}


class RecordView(dict[str, Any]):
    """What a pattern sees of one record: a shallow copy of the record (or of its ``within``
    object), the data field replaced by its parsed JSON (``data_format == "json"``), by its text
    (``"text"``), or left as it was when neither applies (``"none"``: no rule on it matches)."""

    __slots__ = ("data_field", "data_format")
    data_field: str
    data_format: DataFormat


def record_view(
    payload: Mapping[str, Any], field: FilterField, *, decode: bool = True, data: bytes | None = None
) -> RecordView:
    """The view of ``payload`` (an event record, not changed) that filter patterns match.

    With ``decode=False`` the data field is not read (cheaper, for criteria with no rule on it):
    the view's ``data_format`` is then ``"none"``, and no rule on the data field matches. ``data``:
    the bytes that the data field holds in base64, when the source still has them (no decode)."""
    source = payload[field.within] if field.within is not None else payload
    view = RecordView(source)
    view.data_field = field.name
    view.data_format = "none"
    if decode:
        view.data_format, view[field.name] = _decode(source.get(field.name), field, data)
    return view


def _decode(raw: Any, field: FilterField, data: bytes | str | None = None) -> tuple[DataFormat, Any]:
    if not isinstance(raw, str):
        return "none", raw
    if not field.base64:
        data = raw
    elif data is None:  # the source kept no bytes of it: decode the field
        try:
            data = pybase64.b64decode(raw, validate=True)
        except ValueError:
            return "none", raw
    try:
        return "json", orjson.loads(data)  # any JSON value (RFC 8259), in valid UTF-8
    except orjson.JSONDecodeError:
        pass
    if not field.plain_text:
        return "none", raw
    if isinstance(data, bytes):
        try:
            return "text", data.decode("utf-8")
        except UnicodeDecodeError:
            return "none", raw
    return "text", data


class Pattern:
    """One compiled filter pattern. Immutable once built; :meth:`matches` is safe to call from
    anywhere, any number of times."""

    __slots__ = ("_admitted", "_branches", "_paths")

    def __init__(self, branches: Sequence[Branch]) -> None:
        self._paths = tuple(tuple(rule.path for rule in branch) for branch in branches)
        # One walk and one probe per path, shared by the branches that read it.
        distinct = {path for paths in self._paths for path in paths}
        walks: dict[str, tuple[Walk, Probe]] = {path: (walker(path), prober(path)) for path in distinct}
        self._branches: tuple[tuple[Field, ...], ...] = tuple(
            tuple((*walks[rule.path], rule.leaf.hit, rule.leaf.absent) for rule in branch)
            for branch in branches
        )
        # data field -> data format -> the branches that can match such a record (see _admit)
        self._admitted: dict[str, dict[str, tuple[tuple[Field, ...], ...]]] = {}

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether the pattern matches ``event``: a :class:`RecordView`, to which the per-source
        plain-text rules apply, or any other mapping (an EventBridge event), matched as it is."""
        if isinstance(event, RecordView):
            by_format = self._admitted.get(event.data_field) or self._admit(event.data_field)
            branches = by_format[event.data_format]
        else:
            branches = self._branches
        for fields in branches:  # noqa: SIM110 - a loop, not any(): no generator per record
            if branch_matches(fields, event):
                return True
        return False

    def _admit(self, name: str) -> dict[str, tuple[tuple[Field, ...], ...]]:
        """Per data format, the branches left once AWS's format rules are applied: a branch with a
        rule on the data field itself needs text (a JSON body against a plain-string rule: AWS
        drops the message), one with rules inside it needs JSON, one with both can never match."""
        inside = name + "."
        needs: list[str | None] = []
        for paths in self._paths:
            plain = name in paths
            nested = any(path.startswith(inside) for path in paths)
            needs.append("never" if plain and nested else "text" if plain else "json" if nested else None)
        admitted = {
            data_format: tuple(
                fields
                for fields, need in zip(self._branches, needs, strict=True)
                if need is None or need == data_format
            )
            for data_format in ("json", "text", "none")
        }
        self._admitted[name] = admitted
        return admitted

    def uses(self, name: str) -> bool:
        """Whether any rule of the pattern is on the field ``name`` or inside it."""
        inside = name + "."
        return any(path == name or path.startswith(inside) for paths in self._paths for path in paths)

    def plain_rule_on(self, name: str) -> bool:
        """Whether a rule of the pattern is on the field ``name`` itself (a leaf array there)."""
        return any(name in paths for paths in self._paths)

    def __repr__(self) -> str:
        return f"<Pattern: {len(self._branches)} branch(es)>"


def compile_pattern(pattern: str | Mapping[str, Any]) -> Pattern:
    """Compile one filter pattern: its JSON text (as Terraform's ``jsonencode`` writes it) or the
    same, already parsed (a YAML mapping). Raises :class:`FilterPatternError` naming the key path
    and the problem for anything AWS rejects, and for ``wildcard``, which poller does not support."""
    if isinstance(pattern, str):
        parsed = parse_text(pattern)  # duplicate keys: the last one wins, as with AWS
    elif isinstance(pattern, Mapping):
        check_mapping(pattern)
        parsed = pattern
    else:
        raise FilterPatternError(f"pattern: must be JSON text or a mapping, got {type(pattern).__name__}")
    return Pattern(compile_branches(parsed))


class FilterCriteria:
    """A mapping's filters: at most :data:`MAX_FILTERS` patterns, ORed. Without any pattern every
    record matches (no filtering, as an empty ``FilterCriteria`` in AWS)."""

    __slots__ = ("_decode", "patterns")

    def __init__(self, patterns: Sequence[Pattern]) -> None:
        if len(patterns) > MAX_FILTERS:
            raise FilterPatternError(
                f"filter criteria: {len(patterns)} filters, more than the {MAX_FILTERS} allowed"
            )
        self.patterns = tuple(patterns)
        self._decode: dict[str, bool] = {}

    @classmethod
    def compile(
        cls, patterns: Sequence[str | Mapping[str, Any]], *, field: FilterField | None = None
    ) -> FilterCriteria:
        """Compile each pattern (see :func:`compile_pattern`); an error names the filter (1-based).
        With ``field``, also reject what AWS rejects for that source: for Kinesis, a plain rule on
        ``data`` (its data must be JSON)."""
        if isinstance(patterns, str | Mapping):
            raise FilterPatternError("filter criteria: expected a list of patterns")
        if len(patterns) > MAX_FILTERS:
            raise FilterPatternError(
                f"filter criteria: {len(patterns)} filters, more than the {MAX_FILTERS} allowed"
            )
        compiled: list[Pattern] = []
        for number, pattern in enumerate(patterns, 1):
            try:
                compiled.append(compile_pattern(pattern))
            except FilterPatternError as exc:
                raise FilterPatternError(f"filter {number}: {exc}") from None
            if field is not None and not field.plain_text and compiled[-1].plain_rule_on(field.name):
                raise FilterPatternError(
                    f"filter {number}: {field.name}: this source's data is matched as JSON only: "
                    f'use an object ({{"{field.name}": {{"key": [...]}}}}), not an array'
                )
        return cls(compiled)

    def matches(self, view: Mapping[str, Any]) -> bool:
        """Whether the record whose view (:func:`record_view`) this is should be delivered."""
        for pattern in self.patterns:
            if pattern.matches(view):
                return True
        return not self.patterns

    def view(self, payload: Mapping[str, Any], field: FilterField) -> RecordView:
        """:func:`record_view`, decoding the data field only if some pattern has a rule on it."""
        return record_view(payload, field, decode=self._decodes(field))

    def _decodes(self, field: FilterField) -> bool:
        """Whether some pattern has a rule on ``field``'s data (worked out once per field)."""
        decode = self._decode.get(field.name)
        if decode is None:
            decode = self._decode[field.name] = any(p.uses(field.name) for p in self.patterns)
        return decode

    def matches_record(
        self, payload: Mapping[str, Any], field: FilterField, *, data: bytes | None = None
    ) -> bool:
        """Whether the event record ``payload`` of a source whose data field is ``field`` matches.
        ``data``: the bytes its data field holds in base64, if the source kept them (see
        :func:`record_view`)."""
        if not self.patterns:
            return True
        if not self._decodes(field):
            # No rule looks at the data field: the record itself is what the patterns see (no view
            # to build, and no plain-text rules to apply).
            return self.matches(payload[field.within] if field.within is not None else payload)
        return self.matches(record_view(payload, field, data=data))

    def __len__(self) -> int:
        return len(self.patterns)
