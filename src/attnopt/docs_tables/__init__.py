"""The numbers of the docs' results tables, regenerated from the committed records.

Every results table in the README and in ``docs/*_results.md`` is either a *generated block*:

    <!-- table:NAME -->

    | … the table, written by the generator NAME from the records under results/ … |

    <!-- /table -->

or listed in :data:`UNRECORDED` with the reason it has no committed record.  Numbers quoted in
the prose around the tables are *claims*: fragments of text built from the same records that
must occur in the page as written (whitespace and line breaks aside).  :func:`check` compares
both with the pages; :func:`write` rewrites the blocks (``python -m attnopt.docs_tables
--write``); claims are prose and are fixed by hand.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable

from attnopt.files import atomic_write_bytes
from attnopt.docs_tables.records import Claim, Records, RecordsError

# the body never holds a marker: a block written without its blank lines stays unmatched (and
# reported) instead of reaching to the next block's end
BLOCK = re.compile(r"<!-- table:(?P<name>[\w.-]+) -->\n\n(?P<body>(?:(?!<!-- ).)*?)\n\n<!-- /table -->", re.S)
OPEN = re.compile(r"<!-- table:([\w.-]+) -->")
#: The pages whose tables are results: the README's results section and these docs pages.
PAGES = ("README.md", "docs/synthetic_results.md", "docs/vision_results.md", "docs/imdb_results.md",
         "docs/convex_results.md")
README_RESULTS = ("## Results compared with the papers", "## Documentation, examples")

#: Header lines of results tables with no committed record behind them, and why (filled from
#: :mod:`attnopt.docs_tables.unrecorded`).
UNRECORDED: dict[str, str] = {}


Generator = Callable[[Records], str]


def _registry() -> tuple[dict[str, Generator], list[Callable[[Records], list[Claim]]], dict[str, str]]:
    from attnopt.docs_tables import imdb, imdb_cpu, synthetic, synthetic_claims, vision
    from attnopt.docs_tables import unrecorded as exempt

    tables: dict[str, Generator] = {}
    claims = []
    unrecorded: dict[str, str] = dict(UNRECORDED)
    for mod in (synthetic, synthetic_claims, vision, imdb, imdb_cpu, exempt):
        for name, fn in getattr(mod, "TABLES", {}).items():
            if name in tables:  # pragma: no cover - a programming error
                raise ValueError(f"table {name} defined twice")
            tables[name] = fn
        if hasattr(mod, "claims"):
            claims.append(mod.claims)
        unrecorded.update(getattr(mod, "UNRECORDED", {}))
    return tables, claims, unrecorded


def render(root: str | Path, names: Iterable[str] | None = None) -> dict[str, str]:
    """The generated markdown of every table (or of ``names``), from the records under ``root``."""
    tables, _, _ = _registry()
    rec = Records(root)
    return {n: tables[n](rec) for n in (names if names is not None else tables)}


def all_claims(root: str | Path) -> list[Claim]:
    _, claims, _ = _registry()
    rec = Records(root)
    return [c for fn in claims for c in fn(rec)]


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def results_text(page: str, text: str) -> str:
    """The part of ``page`` that holds results (the README: its results section only)."""
    if page == "README.md":
        start, end = text.find(README_RESULTS[0]), text.find(README_RESULTS[1])
        return text[start:end] if 0 <= start < end else text
    return text


def loose_tables(page: str, text: str, unrecorded: dict[str, str]) -> list[str]:
    """Header lines of the results tables of ``page`` that are neither generated nor unrecorded."""
    body = BLOCK.sub("", results_text(page, text))
    body = re.sub(r"```.*?```", "", body, flags=re.S)
    out, prev = [], ""
    for line in body.splitlines():
        if line.startswith("|") and not prev.startswith("|") and line.strip() not in unrecorded:
            out.append(line.strip())
        prev = line
    return out


def check(root: str | Path) -> list[str]:
    """Every difference between the pages under ``root`` and the records: one line each."""
    root = Path(root)
    tables, _, unrecorded = _registry()
    want = render(root)
    problems, seen = [], set()
    for page in PAGES:
        path = root / page
        text = path.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            name, body = m["name"], m["body"]
            seen.add(name)
            if name not in want:
                problems.append(f"{page}: block table:{name} has no generator")
            elif body != want[name]:
                problems.append(f"{page}: table:{name} differs from the records:\n{_diff(body, want[name])}")
        opened = OPEN.findall(text)
        if len(opened) != len(BLOCK.findall(text)):
            problems.append(f"{page}: a table marker is not closed as '<!-- /table -->' after one blank line")
        for header in loose_tables(page, text, unrecorded):
            problems.append(f"{page}: a results table is neither generated nor listed as unrecorded: {header}")
    for name in sorted(set(want) - seen):
        problems.append(f"table:{name} is generated but no page shows it")
    pages = {p: _squash((root / p).read_text(encoding="utf-8")) for p in PAGES}
    for c in all_claims(root):
        # a claim ending in a number must not match the start of a longer one (p = 0.9 in p = 0.99)
        if not re.search(re.escape(_squash(c.text)) + r"(?![0-9])", pages[c.page]):
            problems.append(f"{c.page}: the text {c.text!r} (from the records) is not there")
    return problems


def _diff(have: str, want: str) -> str:
    import difflib

    return "\n".join(difflib.unified_diff(have.splitlines(), want.splitlines(), "page", "records", lineterm="", n=0))


def write(root: str | Path) -> list[str]:
    """Rewrite every generated block of the pages under ``root``; returns the pages changed."""
    root = Path(root)
    want = render(root)
    changed = []
    for page in PAGES:
        path = root / page
        text = path.read_text(encoding="utf-8")

        def sub(m: re.Match) -> str:
            body = want.get(m["name"], m["body"])
            return f"<!-- table:{m['name']} -->\n\n{body}\n\n<!-- /table -->"

        new = BLOCK.sub(sub, text)
        if new != text:
            atomic_write_bytes(path, new.encode("utf-8"))
            changed.append(page)
    return changed


__all__ = ["BLOCK", "PAGES", "UNRECORDED", "Claim", "Records", "RecordsError", "render", "all_claims", "check",
           "write", "loose_tables", "results_text"]
