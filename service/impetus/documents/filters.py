"""OpenAI's attribute filters, as file_search and vector store search take them.

A comparison `{"type": "eq"|"ne"|"gt"|"gte"|"lt"|"lte"|"in"|"nin", "key", "value"}`
or a compound `{"type": "and"|"or", "filters": [...]}`, over a file's
`attributes` (at most 16: strings up to 512 characters, numbers, booleans).
A file without the key fails every comparison but `ne` and `nin`; ordering
comparisons of different types fail (no error: a filter is a question, not a
schema). The api validates the shape (documents_schemas); this module
evaluates it.
"""

from __future__ import annotations

import operator

COMPARE = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gte": operator.ge, "lt": operator.lt,
           "lte": operator.le}
MAX_ATTRIBUTES, MAX_KEY, MAX_VALUE = 16, 64, 512


def matches(spec: dict | None, attributes: dict) -> bool:
    if spec is None:
        return True
    kind = spec["type"]
    if kind == "and":
        return all(matches(f, attributes) for f in spec["filters"])
    if kind == "or":
        return any(matches(f, attributes) for f in spec["filters"])
    present = spec["key"] in attributes
    value, wanted = attributes.get(spec["key"]), spec["value"]
    if kind in ("in", "nin"):
        inside = present and value in wanted
        return inside if kind == "in" else not inside
    if not present:
        return kind == "ne"
    if kind in ("eq", "ne"):
        return COMPARE[kind](value, wanted)
    numeric = (int, float)
    same = (isinstance(value, numeric) and isinstance(wanted, numeric) and not isinstance(value, bool)
            and not isinstance(wanted, bool)) or (isinstance(value, str) and isinstance(wanted, str))
    return same and COMPARE[kind](value, wanted)


def attributes_error(attributes: dict | None) -> str | None:
    """What is wrong with a file's attributes; None when they are fine."""
    if not attributes:
        return None
    if len(attributes) > MAX_ATTRIBUTES:
        return f"attributes may have at most {MAX_ATTRIBUTES} keys."
    for key, value in attributes.items():
        if len(key) > MAX_KEY:
            return f"attribute keys may be at most {MAX_KEY} characters: {key[:20]}..."
        if isinstance(value, str) and len(value) > MAX_VALUE:
            return f"attribute values may be at most {MAX_VALUE} characters (key {key})."
        if not isinstance(value, (str, int, float, bool)):
            return f"attribute values are strings, numbers or booleans (key {key})."
    return None
