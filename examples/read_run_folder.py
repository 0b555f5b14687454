"""Read an attnopt run folder: its configuration, headline numbers and histories.

    python examples/read_run_folder.py runs/demo/e1      # a folder written by `attnopt demo`
    python examples/read_run_folder.py                   # runs a small E1 first (a few seconds)
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

from attnopt.report.runs import is_complete


def small_run(folder: Path) -> Path:
    from attnopt.experiments.synthetic import run_convergence

    run_convergence({"ps": (2.0,), "iterations": 200, "n_seeds": 4, "n_log": 20}, out=folder)
    return folder


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else small_run(Path(tempfile.mkdtemp()) / "e1")
    record = json.loads((folder / "config.json").read_text())
    print(f"{folder}: experiment {record['config'].get('experiment')!r}, attnopt {record['meta']['attnopt_version']}, "
          f"{'complete' if is_complete(folder) else 'NOT complete (interrupted or running)'}")
    summary = json.loads((folder / "summary.json").read_text())
    for key, s in summary.get("per_p", {}).items():
        print(f"  p = {key}: final directional divergence {s['divergence_final_mean']:.4g} "
              f"± {s['divergence_final_std']:.2g} over {s['seeds_used']} seeds")
    for name in sorted(p.name for p in folder.glob("*.csv")):
        with open(folder / name, newline="") as fh:
            rows = list(csv.DictReader(fh))
        print(f"  {name}: {len(rows)} rows, columns {list(rows[0])[:6]}{' …' if len(rows[0]) > 6 else ''}")


if __name__ == "__main__":
    main()
