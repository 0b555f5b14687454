"""``python -m attnopt …`` runs the ``attnopt`` command (useful where the console script is not on PATH)."""

from attnopt.cli import run

if __name__ == "__main__":
    run()
