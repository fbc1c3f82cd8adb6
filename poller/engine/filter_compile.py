"""Compiling an EventBridge event pattern (a Lambda filter pattern) into branches of leaf tests.

A pattern compiles to a list of *branches* (alternatives, ORed); a branch is a tuple of
:class:`Rule` (ANDed), one per dotted field path, each holding one :class:`Leaf`: the values and
operators of that field's array (ORed). ``$or`` forks the branches, as AWS's own engine does
(aws/event-ruler, ``JsonRuleCompiler``), so a field that a later key of the same object sets again
replaces the earlier one in every branch it reaches.

What is accepted and what is rejected is AWS's: the operators Lambda documents
(https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html#filtering-syntax), plus
``cidr`` and the anything-but forms EventBridge has, each checked against the cases recorded with
AWS's TestEventPattern API (tests/unit/fixtures/event_patterns). ``wildcard`` is rejected (see
:func:`_operator`). Nothing here is copied from another project's code.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

MAX_PATTERN_LENGTH = 4096  # characters of the pattern's JSON text (Lambda's Filter.Pattern limit)
MAX_BRANCHES = 1024  # poller's own cap on the alternatives that nested $or multiply into

Test = Callable[[Any], bool]

# Field names that AWS's engine reserves inside "$or" (operator names and a few it keeps for later).
_RESERVED_IN_OR = frozenset(
    {
        *("exactly", "equals-ignore-case", "prefix", "suffix", "anything-but", "exists", "wildcard"),
        *("numeric", "cidr", "=", "<", "<=", ">", ">=", "regex", "not-wildcard", "not-equals-ignore-case"),
        *("date-after", "date-on-or-after", "date-before", "date-on-or-before", "in-date-range"),
        *("ip-address-in-range", "ip-address-not-in-range"),
    }
)
# Integers up to 2**53 are exact doubles; above it AWS compares a number only if it is one.
_EXACT_INTS = 2**53
# What AWS's engine takes for an IP address literal before it parses one (event-ruler Constants).
_IPV4 = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_IPV6 = re.compile(r"[0-9a-fA-F:]*:[0-9a-fA-F:]*")


class FilterPatternError(ValueError):
    """A filter pattern that AWS would reject (``InvalidParameterValueException``), or that poller
    cannot evaluate faithfully. The message is one line: the key path, then the problem."""


@dataclass(frozen=True, slots=True)
class Leaf:
    """The values and operators of one field's array, ORed. Plain values are kept in sets, so that
    most records are decided by one hash lookup; the operators are ``tests`` (value -> bool).
    ``exists``/``absent`` stand for ``{"exists": true}``/``{"exists": false}``."""

    strings: frozenset[str]
    numbers: frozenset[int | float]
    true: bool
    false: bool
    null: bool
    exists: bool
    absent: bool
    tests: tuple[Test, ...]

    def hit(self, value: Any) -> bool:
        """Whether one leaf value of the record (never a dict or list) satisfies this leaf."""
        kind = type(value)
        if kind is str:
            if value in self.strings:
                return True
        elif kind is bool:  # before int: True == 1 and they hash alike, but never match each other
            if self.true if value else self.false:
                return True
        elif kind is int or kind is float:
            if value in self.numbers:  # 300 == 300.0 == 3e2, as AWS compares numbers
                return True
        elif value is None and self.null:
            return True
        if self.exists:
            return True
        for test in self.tests:  # noqa: SIM110 - a loop, not any(): no generator per value
            if test(value):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Rule:
    """One field of a branch: its dotted path (the keys from the pattern's top, joined by dots, as
    AWS joins them) and its leaf."""

    path: str
    leaf: Leaf


Branch = tuple[Rule, ...]


def as_double(value: Any) -> float | None:
    """The double a record's number compares as, or None for anything AWS does not compare
    numerically: booleans, strings, and integers no double holds exactly (AWS's engine takes a
    number only if the double's shortest decimal form has the same value)."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        if -_EXACT_INTS <= value <= _EXACT_INTS:
            return float(value)
        try:
            double = float(value)
        except OverflowError:
            return None
        return double if Decimal(repr(double)) == value else None
    return None


def ip_bytes(text: str) -> bytes | None:
    """The address bytes of an IP literal (4 for IPv4, also for an IPv4-mapped IPv6 address as Java
    reads one; 16 for IPv6), or None when ``text`` is not one."""
    if not (_IPV4.fullmatch(text) or _IPV6.fullmatch(text)):
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed
    return address.packed


# --- the pattern as a whole ----------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_text(text: str) -> Any:
    """The pattern's JSON text parsed; numbers other than integers as Decimal, exactly as written."""
    if len(text) > MAX_PATTERN_LENGTH:
        raise FilterPatternError(
            f"pattern: {len(text)} characters, more than the {MAX_PATTERN_LENGTH} allowed"
        )
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except ValueError as exc:
        raise FilterPatternError(f"pattern: not valid JSON ({exc})") from None


def check_mapping(pattern: Mapping[str, Any]) -> None:
    """Raises for a mapping (from YAML) that is no JSON document, or whose JSON is too long."""
    _check_json(pattern, "")
    text = json.dumps(pattern, ensure_ascii=False, separators=(",", ":"), default=float)
    if len(text) > MAX_PATTERN_LENGTH:
        raise FilterPatternError(
            f"pattern: {len(text)} characters as JSON, more than the {MAX_PATTERN_LENGTH} allowed"
        )


def _check_json(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FilterPatternError(f"{where or 'pattern'}: keys must be strings, got {key!r}")
            _check_json(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, where)
    elif not (value is None or isinstance(value, str | int | float | Decimal)):
        raise FilterPatternError(f"{where or 'pattern'}: {type(value).__name__} is not a JSON value")


def compile_branches(pattern: Any) -> list[Branch]:
    """The branches of a parsed pattern; raises :class:`FilterPatternError`."""
    if not isinstance(pattern, Mapping):
        raise FilterPatternError(f"pattern: must be a JSON object, got {_show(pattern)}")
    try:
        branches = _object(pattern, "", "", [{}], in_or=False)
    except RecursionError:
        raise FilterPatternError("pattern: nested too deeply") from None
    return [tuple(Rule(path, leaf) for path, leaf in branch.items()) for branch in branches]


def _object(
    obj: Mapping[str, Any], where: str, prefix: str, branches: list[dict[str, Leaf]], *, in_or: bool
) -> list[dict[str, Leaf]]:
    if not obj:
        raise FilterPatternError(f"{where or 'pattern'}: empty objects are not allowed")
    for key, value in obj.items():
        here = f"{where}.{key}" if where else key
        if key == "$or":
            branches = _or(value, here, prefix, branches)
            continue
        if in_or and key in _RESERVED_IN_OR:
            raise FilterPatternError(
                f"{here}: {key!r} is an operator name, not allowed as a field inside $or"
            )
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            branches = _object(value, here, path, branches, in_or=in_or)
        elif isinstance(value, list):
            leaf = _leaf(value, here)
            for branch in branches:
                branch[path] = leaf  # a path given twice: the later one wins, as in AWS's engine
        else:
            raise FilterPatternError(f"{here}: must be an object or an array, got {_show(value)}")
    return branches


def _or(value: Any, where: str, prefix: str, branches: list[dict[str, Leaf]]) -> list[dict[str, Leaf]]:
    if not isinstance(value, list) or len(value) < 2:
        raise FilterPatternError(f"{where}: needs an array of at least two objects, got {_show(value)}")
    forked: list[dict[str, Leaf]] = []
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise FilterPatternError(f"{where}[{index}]: must be an object, got {_show(item)}")
        forked += _object(item, f"{where}[{index}]", prefix, [dict(b) for b in branches], in_or=True)
        if len(forked) > MAX_BRANCHES:
            raise FilterPatternError(f"{where}: more than {MAX_BRANCHES} alternatives once $or is expanded")
    return forked


# --- one field's array ---------------------------------------------------------------------------


def _leaf(values: list[Any], where: str) -> Leaf:
    if not values:
        raise FilterPatternError(f"{where}: empty arrays are not allowed")
    strings: set[str] = set()
    numbers: set[int | float] = set()
    tests: list[Test] = []
    flags = {"true": False, "false": False, "null": False, "exists": False, "absent": False}
    for value in values:
        if isinstance(value, bool):
            flags["true" if value else "false"] = True
        elif value is None:
            flags["null"] = True
        elif isinstance(value, str):
            strings.add(value)
            address = ip_bytes(value)
            if address is not None:  # AWS matches an IP literal by address: "::1" is "0:0::1"
                tests.append(_same_address(address))
        elif isinstance(value, int | float | Decimal):
            numbers.add(value if isinstance(value, int) else float(value))
        elif isinstance(value, Mapping):
            test = _operator(value, where)
            if isinstance(test, str):
                flags[test] = True
            else:
                tests.append(test)
        else:
            raise FilterPatternError(
                f"{where}: a value must be a string, number, boolean, null or operator object, got {_show(value)}"
            )
    return Leaf(frozenset(strings), frozenset(numbers), tests=tuple(tests), **flags)


def _same_address(address: bytes) -> Test:
    return lambda v: type(v) is str and ip_bytes(v) == address


def _operator(expression: Mapping[str, Any], where: str) -> Test | str:
    """A test for one operator object, or "exists"/"absent" for ``exists``."""
    if len(expression) != 1:
        raise FilterPatternError(f"{where}: an operator object has exactly one key, got {_show(expression)}")
    ((name, arg),) = expression.items()
    if name in ("prefix", "suffix"):
        return _affix(name, arg, where)
    if name == "equals-ignore-case":
        if not isinstance(arg, str):
            raise FilterPatternError(f"{where}: equals-ignore-case needs a string, got {_show(arg)}")
        return _folded(_Folded(arg).equals)
    if name == "anything-but":
        return _anything_but(arg, where)
    if name == "numeric":
        return _numeric(arg, where)
    if name == "exists":
        if not isinstance(arg, bool):
            raise FilterPatternError(f"{where}: exists needs true or false, got {_show(arg)}")
        return "exists" if arg else "absent"
    if name == "cidr":
        if not isinstance(arg, str):
            raise FilterPatternError(f'{where}: cidr needs a string such as "10.0.0.0/24", got {_show(arg)}')
        return _cidr(arg, where)
    if name == "wildcard":
        # Lambda's operator table has no wildcard, and EventBridge rejects wildcard patterns by a
        # complexity limit it does not publish: rejecting beats matching differently from AWS.
        raise FilterPatternError(
            f"{where}: wildcard is not supported (Lambda event filtering does not document it)"
        )
    raise FilterPatternError(
        f"{where}: unknown operator {name!r} (operators are prefix, suffix, equals-ignore-case, "
        "anything-but, numeric, exists, cidr; case matters)"
    )


def _affix(name: str, arg: Any, where: str) -> Test:
    if isinstance(arg, str):
        if name == "prefix":
            return lambda v: type(v) is str and v.startswith(arg)
        return lambda v: type(v) is str and v.endswith(arg)
    if isinstance(arg, Mapping) and len(arg) == 1 and isinstance(arg.get("equals-ignore-case"), str):
        folded = _Folded(arg["equals-ignore-case"])
        return _folded(folded.prefix if name == "prefix" else folded.suffix)
    raise FilterPatternError(
        f'{where}: {name} needs a string or {{"equals-ignore-case": string}}, got {_show(arg)}'
    )


def _folded(match: Callable[[str], bool]) -> Test:
    return lambda v: type(v) is str and match(v)


def _anything_but(arg: Any, where: str) -> Test:
    if isinstance(arg, Mapping):
        if len(arg) != 1:
            raise FilterPatternError(
                f"{where}: anything-but takes one of prefix, suffix, equals-ignore-case, got {_show(arg)}"
            )
        ((kind, value),) = arg.items()
        if kind == "wildcard":
            raise FilterPatternError(f"{where}: anything-but wildcard is not supported (nor is wildcard)")
        if kind not in ("prefix", "suffix", "equals-ignore-case"):
            raise FilterPatternError(f"{where}: anything-but cannot take {kind!r}")
        texts = value if isinstance(value, list) else [value]
        for text in texts:
            if not isinstance(text, str):
                raise FilterPatternError(f"{where}: anything-but {kind} needs strings, got {_show(value)}")
            if not text and kind != "equals-ignore-case":
                raise FilterPatternError(f"{where}: anything-but {kind} cannot be empty")
        affixes = tuple(texts)
        if kind == "prefix":
            return lambda v: not (type(v) is str and v.startswith(affixes))
        if kind == "suffix":
            return lambda v: not (type(v) is str and v.endswith(affixes))
        folds = [_Folded(text).equals for text in texts]
        return lambda v: not (type(v) is str and any(equals(v) for equals in folds))
    values = arg if isinstance(arg, list) else [arg]
    if values and all(isinstance(value, str) for value in values):
        excluded = frozenset(values)
        return lambda v: not (type(v) is str and v in excluded)
    if values and all(
        isinstance(value, int | float | Decimal) and not isinstance(value, bool) for value in values
    ):
        doubles = frozenset(_bound(value, "anything-but", where) for value in values)
        # Anything that is not a number AWS compares (a string, null, true) is "anything but".
        return lambda v: (number := as_double(v)) is None or number not in doubles
    raise FilterPatternError(
        f"{where}: anything-but needs a string, a number, a non-empty array of only strings or only "
        f"numbers, or an object (prefix, suffix, equals-ignore-case), got {_show(arg)}"
    )


_LOWER = {">": False, ">=": True}  # operator -> inclusive
_UPPER = {"<": False, "<=": True}


def _numeric(arg: Any, where: str) -> Test:
    shape = 'numeric needs an operator and a number, or a range such as [">", 0, "<=", 5]'
    if not isinstance(arg, list) or len(arg) not in (2, 4) or not isinstance(arg[0], str):
        raise FilterPatternError(f"{where}: {shape}, got {_show(arg)}")
    operator = arg[0]
    if operator == "=" and len(arg) == 2:
        equal = _bound(arg[1], "numeric", where)
        return lambda v: as_double(v) == equal
    if operator in _UPPER and len(arg) == 2:
        return _range(None, False, _bound(arg[1], "numeric", where), _UPPER[operator])
    if operator in _LOWER:
        low = _bound(arg[1], "numeric", where)
        if len(arg) == 2:
            return _range(low, _LOWER[operator], None, False)
        if isinstance(arg[2], str) and arg[2] in _UPPER:
            high = _bound(arg[3], "numeric", where)
            if not low < high:
                raise FilterPatternError(
                    f"{where}: numeric range {_show(arg)} has its lower bound not below its upper"
                )
            return _range(low, _LOWER[operator], high, _UPPER[arg[2]])
    raise FilterPatternError(f"{where}: {shape}, got {_show(arg)}")


def _bound(value: Any, operator: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise FilterPatternError(f"{where}: {operator} needs numbers, got {_show(value)}")
    try:
        double = float(value)
    except OverflowError:  # an integer past every double
        double = math.inf
    # AWS compares numbers as doubles and refuses one that no double holds exactly (a float from
    # YAML always is one: its shortest decimal form is what YAML read).
    exact = isinstance(value, float) or Decimal(repr(double)) == Decimal(value)
    if not math.isfinite(double) or not exact:
        raise FilterPatternError(
            f"{where}: {operator}: {_show(value)} is not exactly a double, AWS cannot compare it"
        )
    return double


def _range(low: float | None, low_in: bool, high: float | None, high_in: bool) -> Test:
    def test(value: Any) -> bool:
        number = as_double(value)
        if number is None:
            return False
        if low is not None and (number < low if low_in else number <= low):
            return False
        return high is None or (number <= high if high_in else number < high)

    return test


def _cidr(text: str, where: str) -> Test:
    parts = text.split("/")
    while parts and not parts[-1]:  # Java's String.split, which AWS's engine uses, drops trailing empties
        parts.pop()
    if len(parts) != 2 or not re.fullmatch(r"\+?[0-9]+", parts[1]):
        raise FilterPatternError(f"{where}: cidr needs an address, '/' and the mask bits, got {_show(text)}")
    address = ip_bytes(parts[0])
    if address is None:
        raise FilterPatternError(f"{where}: cidr: {parts[0]!r} is not an IP address")
    bits, total = int(parts[1]), 8 * len(address)
    if bits >= total:  # AWS's engine takes IPv4 masks up to /31 and IPv6 ones up to /127
        raise FilterPatternError(f"{where}: cidr mask bits must be below {total}, got {bits}")
    host = total - bits
    low = int.from_bytes(address) >> host << host
    first, last = low.to_bytes(len(address)), (low | ((1 << host) - 1)).to_bytes(len(address))

    def test(value: Any) -> bool:
        if type(value) is not str:
            return False
        found = ip_bytes(value)
        return found is not None and len(found) == len(first) and first <= found <= last

    return test


class _Folded:
    """equals-ignore-case as AWS's engine does it: each character of the pattern matches its own
    lower- or upper-case form (Java's, per UTF-16 unit: characters beyond the BMP match only
    themselves). ASCII patterns take a fast path; others a regular expression compiled once."""

    __slots__ = ("_head", "_lower", "_size", "_tail")

    def __init__(self, text: str) -> None:
        self._size = len(text)
        self._lower: str | None = text.lower() if text.isascii() else None
        self._head = re.compile("".join(_forms(c, reverse=False) for c in text))
        self._tail = re.compile("".join(_forms(c, reverse=True) for c in reversed(text)))

    def equals(self, value: str) -> bool:
        if self._lower is not None:
            return len(value) == self._size and value.isascii() and value.lower() == self._lower
        return self._head.fullmatch(value) is not None

    def prefix(self, value: str) -> bool:
        if self._lower is not None:
            head = value[: self._size]
            return len(head) == self._size and head.isascii() and head.lower() == self._lower
        return self._head.match(value) is not None

    def suffix(self, value: str) -> bool:
        if self._lower is not None:
            tail = value[len(value) - self._size :] if self._size else ""
            return len(tail) == self._size and tail.isascii() and tail.lower() == self._lower
        return self._tail.match(value[::-1]) is not None


def _forms(char: str, *, reverse: bool) -> str:
    forms = {char} if ord(char) > 0xFFFF else {char.lower(), char.upper()}
    return "(?:" + "|".join(re.escape(f[::-1] if reverse else f) for f in sorted(forms)) + ")"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_plain)
    return text if len(text) <= 80 else text[:77] + "..."


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else repr(value)
