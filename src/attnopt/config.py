"""Experiment configurations: one error type, one mixin and one set of value checks for every
experiment (synthetic, convex, IMDB, vision), so that ``except ConfigError`` catches them all
and every message names the config class and the key.

A config is a dataclass deriving from :class:`ConfigMixin`; its ``__post_init__`` checks its
values with the ``check_*`` functions below (each returns the normalised value)::

    @dataclass(frozen=True)
    class MyConfig(ConfigMixin):
        lr: float = 0.1
        def __post_init__(self):
            object.__setattr__(self, "lr", check_float(self, "lr", self.lr, gt=0))
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from attnopt.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """An experiment configuration has an unknown key or an invalid value."""


def _owner(owner: Any) -> str:
    if isinstance(owner, str):
        return owner
    return owner.__name__ if isinstance(owner, type) else type(owner).__name__


def config_error(owner: Any, msg: str) -> ConfigError:
    """``ConfigError("<Owner>: msg")``; ``owner`` is a config class, instance or name."""
    return ConfigError(f"{_owner(owner)}: {msg}")


def config_from_dict(cls: type[T], values: Mapping[str, Any] | None = None, **overrides: Any) -> T:
    """Build the dataclass ``cls`` from a mapping (``overrides`` win); unknown keys raise
    :class:`ConfigError` naming them and the valid ones.  Lists given for tuple fields (from
    JSON or TOML) become tuples; the values themselves are checked by ``cls``.  A ``TypeError``
    from the constructor (a value of an impossible type) becomes a ``ConfigError`` too."""
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{cls.__name__}: expected a mapping of config keys, got {type(values).__name__}")
    merged = dict(values or {})
    merged.update(overrides)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(merged) - names, key=str)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown config key(s) {unknown}; valid keys: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for k, v in list(merged.items()):
        if isinstance(v, list) and "tuple" in str(hints.get(k, "")):
            merged[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    try:
        return cls(**merged)
    except ConfigError:
        raise
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


class ConfigMixin:
    """``from_dict`` / ``to_dict`` / ``replace`` / ``coerce`` for a config dataclass."""

    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any] | None = None, **overrides: Any) -> T:
        return config_from_dict(cls, values, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: T, **overrides: Any) -> T:
        return type(self).from_dict(dataclasses.asdict(self), **overrides)  # type: ignore[attr-defined,call-overload]

    @classmethod
    def coerce(cls: type[T], config: Any = None, **overrides: Any) -> T:
        """``config`` as a ``cls``: an instance (with ``overrides`` applied), a mapping, or None
        (the defaults).  An instance of a parent config class is widened to ``cls``."""
        if config is None:
            return cls.from_dict(overrides)  # type: ignore[attr-defined]
        if isinstance(config, Mapping):
            return cls.from_dict(config, **overrides)  # type: ignore[attr-defined]
        if isinstance(config, cls):
            return config.replace(**overrides) if overrides else config  # type: ignore[attr-defined]
        if dataclasses.is_dataclass(config) and not isinstance(config, type) and issubclass(cls, type(config)):
            return cls.from_dict(dataclasses.asdict(config), **overrides)  # type: ignore[attr-defined]
        raise ConfigError(f"expected a {cls.__name__} or a mapping, got {type(config).__name__}")


# ----------------------------------------------------------------------------------------
# value checks: each returns the normalised value or raises ConfigError naming owner and key


def check_int(owner: Any, name: str, val: Any, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (an integral float is accepted) in ``[lo, hi]``."""
    if isinstance(val, bool) or not isinstance(val, numbers.Integral):
        if isinstance(val, numbers.Real) and not isinstance(val, bool) and float(val).is_integer():
            val = int(val)
        else:
            raise config_error(owner, f"{name} must be an integer, got {val!r}")
    val = int(val)
    if lo is not None and val < lo:
        raise config_error(owner, f"{name} must be >= {lo}, got {val}")
    if hi is not None and val > hi:
        raise config_error(owner, f"{name} must be <= {hi}, got {val}")
    return val


def check_float(owner: Any, name: str, val: Any, *, gt: float | None = None, ge: float | None = None,
                lt: float | None = None, le: float | None = None, finite: bool = True) -> float:
    """A real number, finite unless ``finite=False``, within the given open/closed bounds."""
    if isinstance(val, bool) or not isinstance(val, numbers.Real):
        raise config_error(owner, f"{name} must be a number, got {val!r}")
    val = float(val)
    if math.isnan(val) or (finite and not math.isfinite(val)):
        raise config_error(owner, f"{name} must be finite, got {val}")
    for bound, bad, word in ((gt, lambda b: val <= b, ">"), (ge, lambda b: val < b, ">="),
                             (lt, lambda b: val >= b, "<"), (le, lambda b: val > b, "<=")):
        if bound is not None and bad(bound):
            raise config_error(owner, f"{name} must be {word} {bound:g}, got {val:g}")
    return val


def check_bool(owner: Any, name: str, val: Any) -> bool:
    if not isinstance(val, bool):
        raise config_error(owner, f"{name} must be true or false, got {val!r}")
    return val


def check_choice(owner: Any, name: str, val: Any, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if val not in choices:
        raise config_error(owner, f"{name} must be one of {', '.join(map(repr, choices))}; got {val!r}")
    return val


def check_p(owner: Any, name: str, val: Any) -> float:
    """A mirror-descent / SVM exponent p > 1 (finite)."""
    v = check_float(owner, name, val)
    if v <= 1.0:
        raise config_error(owner, f"{name}: p must be a finite number > 1 (the potential is (1/p)|w|_p^p), got p={v:g}")
    return v


def check_sequence(owner: Any, name: str, vals: Any, item, *, allow_empty: bool = False,
                   unique: bool = True) -> tuple:
    """A tuple of ``item(owner, f"{name}[i]", v)``; a scalar is a one-element sequence."""
    if isinstance(vals, numbers.Real) and not isinstance(vals, bool):
        vals = (vals,)
    if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence):
        raise config_error(owner, f"{name} must be a sequence, got {vals!r}")
    out = tuple(item(owner, f"{name}[{i}]", v) for i, v in enumerate(vals))
    if not out and not allow_empty:
        raise config_error(owner, f"{name} must not be empty")
    if unique and len(set(out)) != len(out):
        dup = sorted({x for x in out if out.count(x) > 1})
        raise config_error(owner, f"{name} lists {', '.join(map(str, dup))} more than once")
    return out


def check_ps(owner: Any, name: str, vals: Any, allow_empty: bool = False) -> tuple[float, ...]:
    """Distinct exponents p > 1."""
    return check_sequence(owner, name, vals, check_p, allow_empty=allow_empty)


def check_seeds(owner: Any, name: str, vals: Any) -> tuple[int, ...]:
    """Distinct non-negative integer seeds."""
    return check_sequence(owner, name, vals, lambda o, n, v: check_int(o, n, v, 0))
