"""Config validation shared by the convex-attention experiments (unknown keys → clear error)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """An experiment configuration has an unknown key or an invalid value."""


def config_from_dict(cls: type[T], values: Mapping[str, Any] | None = None, **overrides: Any) -> T:
    """Build the dataclass ``cls`` from a mapping; unknown keys raise :class:`ConfigError`."""
    merged = dict(values or {})
    merged.update(overrides)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) for {cls.__name__}: {unknown}; valid keys: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for k, v in list(merged.items()):
        if isinstance(v, list) and "tuple" in str(hints.get(k, "")):
            merged[k] = tuple(v)
    return cls(**merged)
