"""A griffe extension for the documentation site: the docstrings use reStructuredText roles
(``:class:`X```, ``:math:`…```) and ``.. math::`` blocks, which mkdocstrings would show raw.
Cross-reference roles become inline code; formulas become inline code or a code block (the
site needs no MathJax, and so works offline)."""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|py:\w+):`~?([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_LITERAL = re.compile(r"(?<!`)``([^`]+)``(?!`)")  # reST ``literal`` → Markdown `literal`


def _block(match: re.Match) -> str:
    indent, body = match.group(1), match.group(2)
    lines = [ln[len(indent) + 4:] if ln.startswith(indent + "    ") else ln.strip() for ln in body.splitlines()]
    code = "\n".join(indent + ln for ln in lines if ln.strip())
    return f"\n{indent}```text\n{code}\n{indent}```\n\n"


def rst_to_markdown(text: str) -> str:
    text = re.sub(r"(?m)^([ \t]*)\.\. math::[ \t]*\n((?:\1[ \t]+\S.*\n|[ \t]*\n)+)", _block, text + "\n").rstrip("\n")
    text = _MATH.sub(lambda m: f"`{m.group(1)}`", text)
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    return _LITERAL.sub(lambda m: f"`{m.group(1)}`", text)


class RstToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: ARG002 - griffe hook signature
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
