"""The records the docs' tables are built from, and the claims their prose makes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class RecordsError(Exception):
    """A record the docs' tables are built from is missing or unreadable."""


@dataclass(frozen=True)
class Claim:
    """A fragment of prose, built from the records, that ``page`` must contain."""

    page: str
    text: str


class Records:
    """Reads JSON records under ``root`` (the repository), once each."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._cache: dict[str, object] = {}

    def json(self, rel: str):
        if rel not in self._cache:
            path = self.root / rel
            try:
                self._cache[rel] = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise RecordsError(f"missing record {rel} under {self.root}") from None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RecordsError(f"cannot read record {rel}: {exc}") from None
        return self._cache[rel]

    def memo(self, key: str, make):
        """``make()``, computed once per key (e.g. an aggregate several tables are cut from)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def text(self, rel: str) -> str:
        try:
            return (self.root / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecordsError(f"cannot read {rel}: {exc}") from None


__all__ = ["Claim", "Records", "RecordsError"]
