"""MkDocs hooks: the site's Guide page is the README, and its Changelog is CHANGELOG.md, so
neither is kept twice.  The README's links into docs/ are rewritten for the site; on every
page, a link to a file that is not on the site (source code, scripts, result records)
becomes its text in code style instead of a broken link."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_SOURCES = {"index.md": ROOT / "README.md", "changelog.md": ROOT / "CHANGELOG.md"}
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _rewriter(page_dir: Path, from_readme: bool):
    def rewrite(match: re.Match) -> str:
        bang, text, target = match.groups()
        if re.match(r"[a-z]+:|#", target):
            return match.group(0)
        if from_readme and target.startswith("docs/"):
            target = target[len("docs/"):]
        path = (page_dir / target.split("#", 1)[0]).resolve()
        if path.is_relative_to(DOCS) and path.exists():
            return f"{bang}[{text}]({target})"
        return text if text.startswith("`") else f"`{text}`"  # not part of the site
    return rewrite


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs hook signature
    src = _SOURCES.get(page.file.src_uri)
    if src is not None:
        return _LINK.sub(_rewriter(DOCS, True), src.read_text(encoding="utf-8"))
    return _LINK.sub(_rewriter((DOCS / page.file.src_uri).parent, False), markdown)
