"""Numbers quoted in the prose of the synthetic pages (README and docs/synthetic_results.md)."""

from __future__ import annotations

from attnopt.report.docs_tables import Claim, Records


def claims(rec: Records) -> list[Claim]:
    return []
