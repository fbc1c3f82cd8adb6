"""A filter path's probe under fuzzing (SPEC section 14): over any JSON document, with keys that
have dots in them, arrays of objects and of values, objects and nulls where a value would be, the
probe says what the path's walk finds or that it cannot tell (COMPLEX), never something else. The
walk is what the 155 cases recorded against AWS check; the probe is the shortcut taken before it."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from poller.engine.filter_match import COMPLEX, MISSING, prober, walker

ATOMS = ("a", "b", "c")
# Keys a path can read: single atoms and their joins with dots, which another reading of the
# path may take ("a.b" is {"a": {"b": ...}} and {"a.b": ...}).
KEYS = st.sampled_from(["a", "b", "c", "a.b", "b.c", "a.b.c", "x"])
SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=3)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
PATHS = st.lists(st.sampled_from(ATOMS), min_size=1, max_size=4).map(".".join)


def walked(path: str, document: dict[str, Any]) -> list[tuple[Any, Any]]:
    found: list[tuple[Any, Any]] = []
    walker(path)(document, (), found)
    return found


@given(path=PATHS, document=st.dictionaries(KEYS, DOCUMENTS, max_size=4))
@example(path="a.b", document={"a.b": 1, "a": {"b": 2}})
@example(path="a.b", document={"a": [{"b": 1}]})
@example(path="a", document={"a": [1, 2]})
@example(path="a", document={"a": {}})
@example(path="a.b.c", document={"a": {"b.c": 1}})
def test_a_probe_finds_what_the_walk_finds_or_says_it_cannot_tell(
    path: str, document: dict[str, Any]
) -> None:
    value = prober(path)(document)
    if value is COMPLEX:
        return
    found = walked(path, document)
    if value is MISSING:
        assert found == []
    else:
        assert found == [(value, ())]
        assert found[0][0] is value


@given(path=PATHS, value=SCALARS)
def test_a_probe_tells_for_a_plain_record_without_the_walk(path: str, value: Any) -> None:
    # Nested objects with plain keys, the record of most sources: the shortcut is taken.
    document: Any = value
    for atom in reversed(path.split(".")):
        document = {atom: document, "other": [1, {"x": 2}]}
    assert prober(path)(document) is value
    assert prober(path + ".a")(document) is MISSING
