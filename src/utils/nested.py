"""Nested mappings as one level: {"a": {"b": 1}} -> {"a<sep>b": 1}."""
from __future__ import annotations

from typing import Any


def flattened(mapping: dict, separator: str, prefix: str = "") -> dict[str, Any]:
    """Each leaf of `mapping` under its keys joined by `separator`, after `prefix` where given."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{separator}{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flattened(value, separator, name))
        else:
            flat[name] = value
    return flat
