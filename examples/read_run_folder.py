"""Read an attnopt run folder: its configuration, headline numbers and histories.

    python examples/read_run_folder.py runs/demo/e1      # a folder written by `attnopt demo`
    python examples/read_run_folder.py                   # runs a small E1 first (a few seconds)

A folder that is not a run, or whose config.json or summary.json was damaged or hand-edited,
prints one line ``error: …`` naming the file, and the script exits with code 2.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

from attnopt.errors import UserError
from attnopt.report.runs import load_run


def small_run(folder: Path) -> Path:
    from attnopt.experiments.synthetic import run_convergence

    run_convergence({"ps": (2.0,), "iterations": 200, "n_seeds": 4, "n_log": 20}, out=folder)
    return folder


def show(folder: Path) -> None:
    run = load_run(folder)
    print(f"{folder}: experiment {run.experiment!r}, attnopt {run.meta.get('attnopt_version', '?')}, "
          f"{'complete' if run.complete else 'NOT complete (interrupted or running)'}")
    for key, s in (run.summary or {}).get("per_p", {}).items():
        print(f"  p = {key}: final directional divergence {s['divergence_final_mean']:.4g} "
              f"± {s['divergence_final_std']:.2g} over {s['seeds_used']} seeds")
    for name in sorted(p.name for p in folder.glob("*.csv")):
        with open(folder / name, newline="") as fh:
            rows = list(csv.DictReader(fh))
        columns = list(rows[0]) if rows else []
        print(f"  {name}: {len(rows)} rows, columns {columns[:6]}{' …' if len(columns) > 6 else ''}")


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else small_run(Path(tempfile.mkdtemp()) / "e1")
    try:
        show(folder)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
