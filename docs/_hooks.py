"""MkDocs hooks: the site's Guide page is the README, and its Changelog is CHANGELOG.md, so
neither is kept twice.  The README's links into docs/ are rewritten for the site; a link to a
file that is not on the site (source code, scripts) becomes plain text."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_SOURCES = {"index.md": ROOT / "README.md", "changelog.md": ROOT / "CHANGELOG.md"}
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _rewrite(match: re.Match) -> str:
    bang, text, target = match.groups()
    if re.match(r"https?://|#|mailto:", target):
        return match.group(0)
    if target.startswith("docs/"):
        target = target[len("docs/"):]
    if (DOCS / target.split("#", 1)[0]).exists():
        return f"{bang}[{text}]({target})"
    return text  # not part of the site


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs hook signature
    src = _SOURCES.get(page.file.src_uri)
    if src is None:
        return markdown
    return _LINK.sub(_rewrite, src.read_text(encoding="utf-8"))
