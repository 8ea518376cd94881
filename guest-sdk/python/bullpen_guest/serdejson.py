"""For processors that must read and write JSON exactly as a Rust processor
does with serde_json (the example plugins, compared by one conformance
suite): the Python twin of the Go SDK's `serdejson` package and the JS SDK's
`serdejson`. Ordinary processors do not need it."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["describe", "sort_keys"]


def describe(value: Any) -> str:
    """serde's name for a value in its errors: integer `3`, string "x", map, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    return "sequence" if isinstance(value, list) else "map"


def sort_keys(value: Any) -> Any:
    """A copy with every object's keys in serde_json's order (sorted by code
    point: its Map is a BTreeMap)."""
    if isinstance(value, list):
        return [sort_keys(v) for v in value]
    if isinstance(value, dict):
        return {k: sort_keys(value[k]) for k in sorted(value)}
    return value
