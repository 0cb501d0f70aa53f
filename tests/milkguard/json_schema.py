"""A JSON Schema checker for the keywords msgspec writes into the committed schemas.

The tests hold the published schema to the decoder: the examples the decoder takes, the schema
takes too, and what it refuses, the schema refuses (except the cross-field rules a schema cannot
state). The project has no JSON Schema library, and the schemas it generates use a small set of
keywords (draft 2020-12), so this checker knows those and refuses any other it meets: a keyword
it silently skipped would make a test pass that should fail.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}

#: Keywords that carry no constraint.
_NOTES = {"description", "title", "default", "discriminator", "$schema", "$id", "$defs"}


def _is(kind: str, value: Any) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[kind])


def _pattern(rule: str, value: Any) -> bool:
    # JSON Schema's "$" is the end of the text; Python's also matches before a final "\n"
    python = rule.removesuffix("$") + r"\Z" if rule.endswith("$") else rule
    return not isinstance(value, str) or re.search(python, value) is not None


#: Each bounding keyword: whether a value keeps it.
_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "type": _is,
    "enum": lambda rule, value: value in rule,
    "pattern": _pattern,
    "minimum": lambda rule, value: not _is("number", value) or value >= rule,
    "maximum": lambda rule, value: not _is("number", value) or value <= rule,
    "exclusiveMaximum": lambda rule, value: not _is("number", value) or value < rule,
    "exclusiveMinimum": lambda rule, value: not _is("number", value) or value > rule,
    "maxItems": lambda rule, value: not isinstance(value, list) or len(value) <= rule,
    "minItems": lambda rule, value: not isinstance(value, list) or len(value) >= rule,
    "maxLength": lambda rule, value: not isinstance(value, str) or len(value) <= rule,
    "minLength": lambda rule, value: not isinstance(value, str) or len(value) >= rule,
}


def _object(schema: dict[str, Any], value: Any, root: dict[str, Any]) -> list[str]:
    if not isinstance(value, dict):
        return []
    known = schema.get("properties", {})
    found = [f"{name} is required" for name in schema.get("required", ()) if name not in value]
    if schema.get("additionalProperties") is False:
        found += [f"{name} is not allowed" for name in value if name not in known]
    for name, sub in known.items():
        if name in value:
            found += [f"{name}: {e}" for e in errors(sub, value[name], root)]
    return found


def errors(schema: dict[str, Any], value: Any, root: dict[str, Any] | None = None) -> list[str]:
    """Why ``value`` does not meet ``schema`` (empty when it does)."""
    root = schema if root is None else root
    found = _object(schema, value, root)
    for key, rule in schema.items():
        if key in _NOTES or key in ("properties", "required", "additionalProperties"):
            continue
        if key == "$ref":
            found += errors(root["$defs"][rule.removeprefix("#/$defs/")], value, root)
        elif key == "anyOf":
            if all(errors(branch, value, root) for branch in rule):
                found.append(f"{value!r} matches none of anyOf")
        elif key == "items":
            for index, item in enumerate(value if isinstance(value, list) else []):
                found += [f"[{index}]: {e}" for e in errors(rule, item, root)]
        elif key in _BOUNDS:
            if not _BOUNDS[key](rule, value):
                found.append(f"{value!r} breaks {key} {rule!r}")
        else:
            raise ValueError(f"this checker does not know the keyword {key!r}: teach it")
    return found
