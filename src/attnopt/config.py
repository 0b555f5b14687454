"""Experiment configurations: one error type and one unknown-key check for every experiment
(synthetic, IMDB, convex), so that ``except ConfigError`` catches them all."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """An experiment configuration has an unknown key or an invalid value."""


def config_from_dict(cls: type[T], values: Mapping[str, Any] | None = None, **overrides: Any) -> T:
    """Build the dataclass ``cls`` from a mapping (``overrides`` win); unknown keys raise
    :class:`ConfigError` naming them and the valid ones.  Lists given for tuple fields (from
    JSON or YAML) become tuples; the values themselves are checked by ``cls``."""
    merged = dict(values or {})
    merged.update(overrides)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown config key(s) {unknown}; valid keys: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for k, v in list(merged.items()):
        if isinstance(v, list) and "tuple" in str(hints.get(k, "")):
            merged[k] = tuple(v)
    return cls(**merged)
