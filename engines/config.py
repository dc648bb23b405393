"""The one typed configuration system: TOML tables -> frozen dataclasses.

Every section of the daemon, the engines and training is a frozen dataclass whose
`__post_init__` checks its own invariants (litgpt / vLLM style). `from_mapping` builds one
from a parsed TOML table, rejecting unknown keys and wrong types with the dotted key at
fault, so a typo in a config file is an error at start-up and never a silent default.

Only `daemon/config.py` (and the training CLI) read files or environment variables; this
module is pure and does no I/O.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid. `key` is the dotted path of the offending key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


def check(condition: bool, key: str, reason: str) -> None:
    """Raise ConfigError(key, reason) unless condition holds; for `__post_init__` checks."""
    if not condition:
        raise ConfigError(key, reason)


def from_mapping(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass `cls` from a mapping, recursively; errors name the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(key, f"expected a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{key}.{unknown[0]}" if key else unknown[0]
        raise ConfigError(where, f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else name
        kwargs[name] = _convert(hints[name], value, sub)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ checks name their own field; prefix the section's path.
        if key and exc.key and not exc.key.startswith(key + "."):
            raise ConfigError(f"{key}.{exc.key}", exc.reason) from None
        raise
    except TypeError as exc:  # a required key is missing
        raise ConfigError(key, str(exc)) from None


def replace_path(obj: T, dotted: str, raw: str, _prefix: str = "") -> T:
    """Return `obj` with the field at `dotted` (e.g. "server.listen") set from string `raw`.

    Used for GALACTIC_* environment overrides; the string is parsed by the field's type.
    """
    head, _, rest = dotted.partition(".")
    full = _prefix + dotted
    fields = {f.name for f in dataclasses.fields(obj)}
    if head not in fields:
        raise ConfigError(full, "unknown key")
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(full, "not a table")
        return dataclasses.replace(obj, **{head: replace_path(current, rest, raw, f"{_prefix}{head}.")})
    hint = get_type_hints(type(obj))[head]
    try:
        return dataclasses.replace(obj, **{head: _convert(hint, _parse_scalar(hint, raw, full), full)})
    except ConfigError as exc:
        if exc.key == head:  # a __post_init__ check names only its own field
            raise ConfigError(full, exc.reason) from None
        raise


def to_mapping(obj: Any) -> Any:
    """The inverse of `from_mapping`: plain dicts/lists/scalars, Paths as strings."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _parse_scalar(hint: Any, raw: str, key: str) -> Any:
    base = _strip_optional(hint)
    if base is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, f"expected a boolean, got {raw!r}")
    if base is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(key, f"expected an integer, got {raw!r}") from None
    if base is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(key, f"expected a number, got {raw!r}") from None
    if get_origin(base) is tuple:
        return [s.strip() for s in raw.split(",") if s.strip()]
    if _is_optional(hint) and raw == "":
        return None
    return raw


def _is_optional(hint: Any) -> bool:
    return get_origin(hint) in (typing.Union, types.UnionType) and type(None) in get_args(hint)


def _strip_optional(hint: Any) -> Any:
    if _is_optional(hint):
        rest = [a for a in get_args(hint) if a is not type(None)]
        return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    return hint


def _convert(hint: Any, value: Any, key: str) -> Any:
    if _is_optional(hint):
        if value is None:
            return None
        hint = _strip_optional(hint)
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, key)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {type(value).__name__}")
        args = get_args(hint)
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {type(value).__name__}")
        _, vt = get_args(hint)
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(key, f"expected a path string, got {type(value).__name__}")
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected a boolean, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported config type {hint!r}")  # a bug in a config class
