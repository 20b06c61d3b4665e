"""Checks of config values that name the key and what it needs."""
from __future__ import annotations


def require_int(key: str, value, least: int = 1, allow_none: bool = False, why: str = "") -> None:
    """ValueError unless `value` is an int >= `least` (a bool is not: YAML's `true` would pass
    as 1), or None when `allow_none`; `why` is appended to the message."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        need = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise ValueError(f"{key}={value!r} must be {need}{' or null' if allow_none else ''}{why}")
