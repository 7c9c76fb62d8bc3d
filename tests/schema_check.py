"""A small JSON Schema checker for the subset docs/status.schema.json uses
(type, enum, required, properties, items, additionalProperties)."""

from __future__ import annotations

from typing import Any

_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
          "null": type(None), "boolean": bool}


def check(value: Any, schema: dict, where: str = "$") -> None:
    """Raise AssertionError naming the first place where ``value`` breaks ``schema``."""
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not one of {schema['enum']}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in types)
        assert ok, f"{where}: {value!r} is not {types}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key!r}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check(value[key], sub, f"{where}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, v in value.items():
                if key not in schema.get("properties", {}):
                    check(v, extra, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check(item, schema["items"], f"{where}[{i}]")
