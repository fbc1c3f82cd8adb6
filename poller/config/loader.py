"""Load a YAML config file into a :class:`~poller.config.Config` (SPEC sections 3, 4 and 9).

A bad file is reported as one :class:`~poller.errors.ConfigError` that lists every problem at
once, sorted by line, one line each: ``FILE:LINE: dotted.key.path: what is wrong`` (the line and
the key path are left out where they are not known).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from poller.config.functions import Function
from poller.config.models import Config
from poller.errors import ConfigError, HandlerLoadError
from poller.runtime.environments.runtimes import check
from poller.runtime.handler import load_handler

DEFAULT_CONFIG_PATH = "config/mappings.yaml"

Key = str | int
KeyPath = tuple[Key, ...]
Position = tuple[int, int]  # (line, column), both 0-based as in YAML marks

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PLACEHOLDER = "null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_:-]+")
MAX_VALUES = 100_000  # a real config holds hundreds


def default_config_path() -> str:
    """The config file used when ``-c`` is not given: ``$POLLER_CONFIG``, else ``config/mappings.yaml``."""
    return os.environ.get("POLLER_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    check_handlers: bool = True,
) -> Config:
    """Read, interpolate, parse and validate a config file; return the config or raise ConfigError.

    ``${VAR}`` and ``${VAR:-default}`` are replaced from ``environ`` (default ``os.environ``) before
    parsing; ``:-`` also replaces a variable that is set but empty, as in the shell. Whole-line
    comments are left alone, so a commented-out line may name a variable that is not set.

    With ``check_handlers`` every inline function's handler is imported (with the function's
    ``environment`` set while it imports), the files that the other functions need are looked
    for, and the current working directory is added to
    ``sys.path`` for good, as Lambda puts the task root there: handlers are found in the working
    directory and on PYTHONPATH, at validation and at run time alike.

    Raises ConfigError carrying every problem found: unreadable file, undefined variables, YAML
    syntax errors, duplicate keys, schema violations, names that point nowhere, handlers that
    cannot be imported.
    """
    file = os.fspath(path)
    try:
        raw = Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read the config file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{file}: the config file is not UTF-8 text ({exc.reason} at byte {exc.start})"]
        ) from exc

    text, unset = _substitute(raw, os.environ if environ is None else environ)
    try:
        document = _parse(text)
    except yaml.YAMLError as exc:
        problems = [_yaml_problem(exc, text), *(_Problem(at[0] + 1, (), message) for at, message in unset)]
        raise ConfigError(_render(file, problems)) from exc

    config, found = _check(document, check_handlers=check_handlers)
    # A variable that is not set is the real problem; what its placeholder then breaks is noise.
    blamed = [document.path_at(at) for at, _ in unset]
    problems = [_Problem(at[0] + 1, path, message) for (at, message), path in zip(unset, blamed, strict=True)]
    problems += [problem for problem in found if not any(_within(problem.path, path) for path in blamed)]
    if problems or config is None:
        raise ConfigError(_render(file, problems))
    return config


def _check(document: _Document, *, check_handlers: bool) -> tuple[Config | None, list[_Problem]]:
    if not isinstance(document.data, dict):
        top = _Problem(
            document.top_line,
            (),
            "the top level must be a mapping with the sections connections, functions, destinations, "
            f"mappings and admin; found {_kind_of(document.data)}",
        )
        return None, [*document.problems, top]
    config, errors = _validate(document.data)
    if config is not None:
        errors += config.reference_errors()
    if check_handlers:
        errors += _handler_problems(document.data)
    return config, document.problems + [
        _Problem(document.line_of(path), path, message) for path, message in errors
    ]


def _within(path: KeyPath, prefix: KeyPath) -> bool:
    return bool(prefix) and path[: len(prefix)] == prefix


def _render(file: str, problems: list[_Problem]) -> list[str]:
    return [problem.render(file) for problem in sorted(problems, key=lambda problem: problem.line or 0)]


@dataclass(frozen=True)
class _Problem:
    line: int | None  # 1-based
    path: KeyPath
    message: str

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        if self.path:
            return f"{where}: {_dotted(self.path)}: {self.message}"
        return f"{where}: {self.message}"


def _dotted(path: KeyPath) -> str:
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            # Names may contain dots; quoting keeps the path readable as a path.
            part = key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)
            text += f".{part}" if text else part
    return text


# --- environment ---------------------------------------------------------------------------------


def _substitute(text: str, environ: Mapping[str, str]) -> tuple[str, list[tuple[Position, str]]]:
    """Replace ``${VAR}`` / ``${VAR:-default}`` line by line; report where a value is missing.

    A missing value is replaced by ``null`` so that parsing and validation can go on and report
    everything else (an empty string would break flow collections and keys). Positions are in the
    substituted text, where the YAML nodes are.
    """
    problems: list[tuple[Position, str]] = []
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if line.lstrip().startswith("#"):
            continue
        out: list[str] = []
        column = 0  # in the substituted line
        rest = 0  # in the original line
        for match in _ENV_REFERENCE.finditer(line):
            out.append(line[rest : match.start()])
            column += match.start() - rest
            rest = match.end()
            name, default = match.group(1), match.group(2)
            value = environ.get(name)
            if default is not None and not value:
                value = default
            if value is None:
                problems.append(
                    ((number, column), f"environment variable {name!r} is not set and has no default")
                )
                value = _PLACEHOLDER
            elif "\n" in value or "\r" in value:
                # A line break would move every later line, and the YAML structure with it.
                problems.append(((number, column), f"environment variable {name!r} holds a line break"))
                value = _PLACEHOLDER
            out.append(value)
            column += len(value)
        out.append(line[rest:])
        lines[number] = "".join(out)
    return "\n".join(lines), problems


# --- YAML ----------------------------------------------------------------------------------------


@dataclass
class _Document:
    """The parsed data, with the line of every key and the span of every value in the file."""

    data: Any = None
    top_line: int = 1
    lines: dict[KeyPath, int] = field(default_factory=dict)
    spans: list[tuple[KeyPath, Position, Position]] = field(default_factory=list)
    problems: list[_Problem] = field(default_factory=list)
    values: int = 0  # nodes walked, aliases expanded

    def line_of(self, path: KeyPath) -> int | None:
        """The line of the deepest key of ``path`` that is in the file."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def path_at(self, position: Position) -> KeyPath:
        """The key path of the innermost entry whose key or value covers ``position``."""
        inside = [path for path, start, end in self.spans if start <= position < end]
        return max(inside, key=len, default=())

    def walk(self, node: yaml.Node, path: KeyPath, ancestors: frozenset[int], merged: bool = False) -> None:
        if id(node) in ancestors:
            return  # a recursive alias
        self.values += 1
        if self.values > MAX_VALUES:
            # Aliases of aliases expand exponentially ("billion laughs"): refuse before validating.
            raise _UnreadableYAML(f"the file expands to more than {MAX_VALUES} values through aliases")
        ancestors = ancestors | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._entry((*path, index), item, item, merged)
                self.walk(item, (*path, index), ancestors, merged)
        elif isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            merges: list[yaml.Node] = []
            for key, value in node.value:
                if key.tag == _MERGE_TAG:
                    merges.append(value)
                    continue
                if not isinstance(key, yaml.ScalarNode):
                    continue  # a complex key; the constructor or the schema rejects it
                line = key.start_mark.line + 1
                first = seen.get((key.tag, key.value))
                if first is None:
                    seen[(key.tag, key.value)] = line
                elif not merged:
                    self.problems.append(
                        _Problem(
                            line, (*path, key.value), f"duplicate key {key.value!r} (first on line {first})"
                        )
                    )
                self._entry((*path, key.value), key, value, merged)
                self.walk(value, (*path, key.value), ancestors, merged)
            # Keys written out win over merged ones (YAML merge keys), so merged lines come last.
            for source in merges:
                for mapping in source.value if isinstance(source, yaml.SequenceNode) else [source]:
                    self.walk(mapping, path, ancestors, merged=True)

    def _entry(self, path: KeyPath, first: yaml.Node, value: yaml.Node, merged: bool) -> None:
        line = first.start_mark.line + 1
        if merged:
            self.lines.setdefault(path, line)
        else:
            self.lines[path] = line  # a duplicate key: the later value is the one used
        start: Position = (first.start_mark.line, first.start_mark.column)
        end: Position = (value.end_mark.line, value.end_mark.column)
        if isinstance(value, yaml.ScalarNode) and value.start_mark.index == value.end_mark.index:
            end = (end[0], sys.maxsize)  # an empty value has no width; let it own the rest of its line
        self.spans.append((path, start, end))


class _UnreadableYAML(yaml.YAMLError):
    """YAML that parses but that poller will not read: too deep, too large, or a value that cannot
    be converted (found by fuzzing, tests/fuzz/)."""


def _parse(text: str) -> _Document:
    loader = yaml.SafeLoader(text)
    try:
        document = _Document()
        node = loader.get_single_node()
        if node is not None:
            document.top_line = node.start_mark.line + 1
            # Walk before constructing: the constructor rewrites merge keys in place.
            document.walk(node, (), frozenset())
            document.data = loader.construct_document(node)
        return document
    except RecursionError:
        raise _UnreadableYAML("the file nests collections too deeply") from None
    except ValueError as exc:  # a number past Python's limit of 4300 digits, a bad timestamp
        raise _UnreadableYAML(f"a value cannot be read ({exc})") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError, text: str) -> _Problem:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        return _Problem(mark.line + 1 if mark else None, (), f"invalid YAML: {what}")
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return _Problem(line, (), f"invalid YAML: character #x{exc.character:04x} is not allowed")
    return _Problem(None, (), f"invalid YAML: {exc}")


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


# --- validation ----------------------------------------------------------------------------------


def _validate(data: dict[Any, Any]) -> tuple[Config | None, list[tuple[KeyPath, str]]]:
    try:
        return Config.model_validate(data), []
    except ValidationError as exc:
        return None, [_describe(error, data) for error in exc.errors(include_url=False)]


def _describe(error: ErrorDetails, data: Any) -> tuple[KeyPath, str]:
    """A pydantic error as (the user's key path, a message for a person)."""
    path, is_name = _user_path(error["loc"], data)
    kind, ctx = error["type"], error.get("ctx", {})
    if is_name:
        return path, f"invalid name: {error['msg']}"
    if kind == "extra_forbidden":
        return path, f"unknown key {path[-1]!r}"
    if kind == "missing":
        return path, f"missing required key {path[-1]!r}"
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        tag = str(ctx.get("discriminator", "type")).strip("'")
        if kind == "union_tag_not_found":
            return (*path, tag), f"missing required key {tag!r}"
        return (*path, tag), f"unknown {tag} {ctx['tag']!r}; expected one of {ctx['expected_tags']}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"expected a mapping, found {_kind_of(error['input'])}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return path, str(ctx["error"])
    return path, error["msg"]


def _user_path(loc: tuple[str | int, ...], data: Any) -> tuple[KeyPath, bool]:
    """Turn a pydantic ``loc`` into the key path as written in the file.

    Returns the path and whether the error is about a name (a dict key) rather than a value.
    For a discriminated union pydantic inserts the tag (the ``type`` value) after the union's
    key; it is dropped, once per level. An element equal to the tag is a tag unless it is also a
    key of the mapping and nothing follows it (a model validator's error ends at the tag).
    """
    path: list[Key] = []
    node = data
    tag_dropped = is_name = False
    for index, element in enumerate(loc):
        if element == "[key]":
            is_name = True
            continue
        if isinstance(node, dict):
            is_last = index == len(loc) - 1
            if not tag_dropped and node.get("type") == element and (element not in node or not is_last):
                tag_dropped = True
                continue
            node = node.get(element)
            path.append(str(element))
        elif isinstance(node, list) and isinstance(element, int):
            node = node[element] if 0 <= element < len(node) else None
            path.append(element)
        else:
            node = None
            path.append(element)
        tag_dropped = False
    return tuple(path), is_name


# --- handlers ------------------------------------------------------------------------------------


def _handler_problems(data: dict[Any, Any]) -> list[tuple[KeyPath, str]]:
    """Import every valid inline function's handler and report those that cannot be loaded; check
    what can be checked of the others without running their code (their module or bootstrap is
    there, their runtime can start here: :func:`poller.runtime.environments.runtimes.check`)."""
    functions = data.get("functions")
    if not isinstance(functions, dict):
        return []
    problems: list[tuple[KeyPath, str]] = []
    for name, entry in functions.items():
        try:
            function = Function.model_validate(entry)
        except ValidationError:
            continue  # already reported by the whole-config validation
        if not function.inline:
            found = check(function.effective_runtime, function.handler, function.code)
            problems += [(("functions", str(name), key), message) for key, message in found]
            continue
        try:
            with _environment(function.environment):
                load_handler(function.handler)
        except HandlerLoadError as exc:
            problems.append((("functions", str(name), "handler"), str(exc)))
    return problems


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set a function's environment while its module imports (handlers often read it at import)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
