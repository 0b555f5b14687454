"""``python -m attnopt.docs_tables [--write] [--root DIR]``: check (or rewrite) the
results tables of the README and docs/*_results.md against the records under results/.

Exit status: 0 when the pages agree with the records (or were rewritten), 1 when they differ
(each difference printed), 2 for a user error (no repository found, a record missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnopt.docs_tables import PAGES, RecordsError, check, write


def find_root(start: Path) -> Path | None:
    """The first of ``start`` and its parents that holds results/ and every results page."""
    for d in (start, *start.parents):
        if (d / "results").is_dir() and all((d / p).is_file() for p in PAGES):
            return d
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnopt.docs_tables", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="rewrite the generated tables in the pages")
    ap.add_argument("--root", type=Path, default=None, help="the repository (default: found from the current folder)")
    args = ap.parse_args(argv)
    root = args.root.resolve() if args.root else find_root(Path.cwd().resolve())
    if root is None or find_root(root) != root:
        where = args.root or Path.cwd()
        print(f"error: {where} is not an attnopt repository with results/ and the results pages "
              "(run from the repository or pass --root)", file=sys.stderr)
        return 2
    try:
        if args.write:
            changed = write(root)
            print("rewrote " + ", ".join(changed) if changed else "every table already agrees with the records")
        problems = check(root)
    except RecordsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} difference(s) between the pages and the records", file=sys.stderr)
        return 1
    if not args.write:
        print("every table and quoted number agrees with the records")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
