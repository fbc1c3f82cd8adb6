"""Secrets never leak (SPEC section 16): one mechanism, in two halves.

1. **Secret types in the config.** A password, token or secret key is a :class:`Secret`; a URL that
   carries credentials is a :class:`SecretUrl`. Both render as ``******`` (a URL as itself with its
   password masked) in ``str``, ``repr``, f-strings, ``model_dump(mode="json")`` and the JSON Schema,
   so a config object printed, logged or diffed shows no secret. The code that hands a value to a
   client library asks for it by name: :meth:`Secret.reveal`.
2. **Redaction of text.** Every secret value the config held is remembered when its ``Secret`` is
   made (by validation), and :func:`redact` replaces each remembered value, and the ``user:password@``
   part of any URL, by ``******``. It runs where text leaves the process: log lines
   (:class:`RedactingFilter`), the messages of poller's own errors (:class:`poller.errors.PollerError`
   redacts its arguments), span statuses and exception events, ``/mappings`` and ``/readyz``, and
   ``poller validate``'s output. Client libraries put URLs and reasons into their exceptions; those
   are caught there.

A value shorter than :data:`MIN_REDACTED_LENGTH` is masked inside URLs but not everywhere else: masking
every ``a`` of every log line would make the logs unreadable without protecting anything.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import unquote

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

MASK = "******"
MIN_REDACTED_LENGTH = 4

# ``scheme://user:password@`` (the password ends at the last "@" before the host, as URL parsers read
# it); also ``scheme://password@`` forms are left alone: a bare user name is not a secret.
_URL_CREDENTIALS = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"<>]*:)(?P<password>[^\s/'\"<>]*)@"
)

_lock = threading.Lock()
_known: set[str] = set()
_pattern: re.Pattern[str] | None = None


def remember(value: str) -> None:
    """Add a secret value to those :func:`redact` masks (with its URL-encoded form's decoding)."""
    global _pattern
    candidates = {value, unquote(value)}
    fresh = {c for c in candidates if len(c) >= MIN_REDACTED_LENGTH and c not in _known}
    if not fresh:
        return
    with _lock:
        _known.update(fresh)
        # Longest first, so that a secret that contains another is masked whole.
        ordered = sorted(_known, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(value) for value in ordered))


def forget_all() -> None:
    """Forget every remembered value (for tests that check what is remembered)."""
    global _pattern
    with _lock:
        _known.clear()
        _pattern = None


def redact(text: str) -> str:
    """``text`` with every remembered secret value and every URL password replaced by ``******``."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "://" in text:
        text = _URL_CREDENTIALS.sub(lambda match: f"{match['head']}{MASK}@", text)
    return text


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to a string, or to every string inside lists, tuples and dicts."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item) for item in value)
    return value


class Secret:
    """A secret string from the config. Renders as ``******``; :meth:`reveal` gives the value.

    Equal to another Secret with the same value (so that two configs can be compared), and
    remembered for :func:`redact` as soon as it is made."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        remember(value)

    def reveal(self) -> str:
        """The secret itself: only for handing it to the client library that needs it."""
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and type(other) is type(self) and other._value == self._value

    def __hash__(self) -> int:
        return hash((type(self), self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        from_text = core_schema.no_info_before_validator_function(
            _text_of, core_schema.no_info_after_validator_function(cls._from_text, core_schema.str_schema())
        )
        return core_schema.json_or_python_schema(
            json_schema=from_text,
            python_schema=from_text,
            # Masked in JSON; in Python (model_dump) the Secret itself, so that a dump validates back.
            serialization=core_schema.plain_serializer_function_ser_schema(_serialize, info_arg=True),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "password", "writeOnly": True}

    @classmethod
    def _from_text(cls, value: str) -> Secret:
        return cls(value)


REVEAL = {"reveal_secrets": True}  # model_dump(mode="json", context=REVEAL) writes a config back out


def _serialize(secret: Secret, info: core_schema.SerializationInfo) -> Any:
    if not info.mode_is_json():
        return secret
    return secret.reveal() if (info.context or {}).get("reveal_secrets") else str(secret)


def _text_of(value: Any) -> Any:
    """What a secret field is given, as text: a Secret's value, or a string; a number is refused
    with the fix (YAML reads an unquoted ``${VAR}`` of digits as a number)."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, bool | int | float):
        raise PydanticCustomError("secret_not_text", 'must be text: quote the value ("${VAR}")')
    return value


class SecretUrl(Secret):
    """A URL that may carry credentials (``amqp://user:password@host/vhost``). Renders as the URL
    with its password masked; remembers the password (and the whole URL) for :func:`redact`."""

    __slots__ = ()

    def __init__(self, value: str) -> None:
        # Only the password is remembered: a line that shows the URL keeps its host and user.
        self._value = value
        remember_url_password(value)

    def __str__(self) -> str:
        password = _password_of(self._value)
        if not password:
            return self._value
        return self._value.replace(f":{password}@", f":{MASK}@", 1)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "uri"}


def remember_url_password(url: str) -> None:
    """Remember the password inside ``url`` even where ``url`` is not valid (a config error about
    it must not show the password either)."""
    password = _password_of(url)
    if password:
        remember(password)


def _password_of(url: str) -> str | None:
    """The password of ``scheme://user:password@host...``, as written (the userinfo ends at the
    last "@" of the authority; a password that is not percent-encoded may even hold a "/")."""
    _, separator, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if not separator or not at:
        return None
    _, colon, password = userinfo.partition(":")
    return password if colon and password else None


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's message, its exception text and its stack (attach it to the
    handler, after which every formatter sees only redacted text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message: the formatter reports that
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
