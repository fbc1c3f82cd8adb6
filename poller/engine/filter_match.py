"""Matching one branch of a compiled filter pattern against a record's view (SPEC section 14).

A field of a branch is a dotted path and its leaf (:class:`~poller.engine.filter_compile.Leaf`).
Its values in a record are found by a *walk*, which follows every reading of the path (each dot
may be a step into an object or part of a key with dots in it), into arrays too, and notes in
which element of which array of objects each value was found: AWS wants the values that satisfy
a branch's fields to come from one element (event-ruler's ``rulesForJSONEvent``). Most records
need none of that, so each path also has a *probe*, which finds its value when the path reads one
way only and crosses no array, and says :data:`COMPLEX` when it would need the walk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Context = tuple[tuple[int, int], ...]  # (id of an array, index in it) from the root down
Found = list[tuple[Any, Context]]
Walk = Callable[[Mapping[str, Any], Context, Found], None]
Probe = Callable[[Mapping[str, Any]], Any]  # the one value at a path, MISSING, or COMPLEX
# A branch's field: the path's walk and probe, the leaf's hit, and whether it holds exists: false.
Field = tuple[Walk, Probe, Callable[[Any], bool], bool]
MISSING = object()  # the path leads to no value
# The probe cannot tell: an array or an object on the way or at the end, or a key with dots.
COMPLEX = object()


def branch_matches(fields: tuple[Field, ...], event: Mapping[str, Any]) -> bool:
    """Whether every field of a branch holds in ``event``, with the values that satisfy fields
    inside arrays of objects taken from one element of each array."""
    constrained: list[set[Context]] | None = None
    for walk, probe, hit, absent in fields:
        value = probe(event)
        if value is not COMPLEX:  # what most records are: one value or none, in no array of objects
            if value is MISSING:
                if absent:
                    continue
                return False
            if hit(value):
                continue
            return False
        found: Found = []
        walk(event, (), found)
        if not found:
            if absent:
                continue
            return False
        contexts: set[Context] | None = None
        for value, context in found:
            if hit(value):
                if not context:  # not inside an array of objects: agrees with any other field
                    break
                if contexts is None:
                    contexts = {context}
                else:
                    contexts.add(context)
        else:
            if contexts is None:
                return False
            if constrained is None:
                constrained = [contexts]
            else:
                constrained.append(contexts)
    return constrained is None or len(constrained) < 2 or _consistent(constrained)


def walker(path: str) -> Walk:
    """A function that appends to ``found`` the leaf values (with their array context) at ``path``
    under a node. Each dotted atom can be a key of its own or part of a key with dots in it, so
    every join is looked up: ``a.b`` is ``{"a": {"b": ...}}`` and ``{"a.b": ...}``. Built once per
    path, as closures, since this runs for every record."""
    atoms = path.split(".")
    last = len(atoms)
    built: dict[int, Walk] = {}

    def build(at: int) -> Walk:
        if at not in built:
            options = tuple(
                (".".join(atoms[at:step]), None if step == last else build(step))
                for step in range(at + 1, last + 1)
            )
            built[at] = _lookup(options)
        return built[at]

    return build(0)


def prober(path: str) -> Probe:
    """The probe of ``path``: the value the walk would find alone, with no array context, or
    MISSING where it would find nothing; COMPLEX wherever the walk might find more (an array or
    an object at the end, an array on the way, a key with dots that another reading of the path
    could take). Built once per path, like the walk; a closure per path length, as it runs for
    every record."""
    atoms = path.split(".")
    last = atoms[-1]
    if len(atoms) == 1:

        def one(node: Mapping[str, Any]) -> Any:
            value = node.get(last, MISSING)
            return COMPLEX if isinstance(value, dict | list) else value

        return one
    # Per step before the last: its key, and the keys with dots that begin there.
    steps = tuple(
        (atoms[at], tuple(".".join(atoms[at:end]) for end in range(at + 2, len(atoms) + 1)))
        for at in range(len(atoms) - 1)
    )
    if len(steps) == 1:
        ((first, (joined,)),) = steps

        def two(node: Mapping[str, Any]) -> Any:
            if joined in node:
                return COMPLEX
            child = node.get(first)
            if isinstance(child, dict):
                value = child.get(last, MISSING)
                return COMPLEX if isinstance(value, dict | list) else value
            return COMPLEX if isinstance(child, list) else MISSING

        return two

    def deeper(node: Mapping[str, Any]) -> Any:
        for key, joins in steps:
            for joined in joins:
                if joined in node:
                    return COMPLEX
            child = node.get(key)
            if not isinstance(child, dict):
                return COMPLEX if isinstance(child, list) else MISSING
            node = child
        value = node.get(last, MISSING)
        return COMPLEX if isinstance(value, dict | list) else value

    return deeper


def _lookup(options: tuple[tuple[str, Walk | None], ...]) -> Walk:
    if len(options) == 1:  # the last atom, most often the only one: no loop
        ((key, inner),) = options
        if inner is None:

            def leaf(node: Mapping[str, Any], context: Context, found: Found) -> None:
                child = node.get(key, MISSING)
                if isinstance(child, dict | list):
                    _leaves(child, context, found)
                elif child is not MISSING:
                    found.append((child, context))

            return leaf
        step = inner

        def down(node: Mapping[str, Any], context: Context, found: Found) -> None:
            child = node.get(key)
            if isinstance(child, dict):
                step(child, context, found)
            elif isinstance(child, list):
                _each(child, step, context, found)

        return down

    def walk(node: Mapping[str, Any], context: Context, found: Found) -> None:
        for key, inner in options:
            child = node.get(key, MISSING)
            if child is MISSING:
                continue
            if inner is None:
                if isinstance(child, dict | list):
                    _leaves(child, context, found)
                else:
                    found.append((child, context))
            elif isinstance(child, dict):
                inner(child, context, found)
            elif isinstance(child, list):
                _each(child, inner, context, found)

    return walk


def _each(array: list[Any], inner: Walk, context: Context, found: Found) -> None:
    marker = id(array)
    for index, item in enumerate(array):
        if isinstance(item, dict):
            inner(item, (*context, (marker, index)), found)
        elif isinstance(item, list):
            _each(item, inner, (*context, (marker, index)), found)


def _leaves(value: Any, context: Context, found: Found) -> None:
    if isinstance(value, list):
        for item in value:
            _leaves(item, context, found)
    elif not isinstance(value, dict):  # an object is no leaf: "exists" is false for it
        found.append((value, context))


def _consistent(fields: list[set[Context]]) -> bool:
    """Whether one context per field can be chosen with no two in different elements of one array.
    Contexts run from the root down, so two share an array only along a common beginning."""
    order = sorted(fields, key=len)

    def agree(one: Context, other: Context) -> bool:
        for (array, index), (array2, index2) in zip(one, other, strict=False):
            if array != array2:
                return True
            if index != index2:
                return False
        return True

    def search(depth: int, chosen: list[Context]) -> bool:
        if depth == len(order):
            return True
        for context in order[depth]:
            if all(agree(context, earlier) for earlier in chosen):
                chosen.append(context)
                if search(depth + 1, chosen):
                    return True
                chosen.pop()
        return False

    return search(0, [])
