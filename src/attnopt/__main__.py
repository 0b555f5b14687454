"""``python -m attnopt …`` runs the ``attnopt`` command (useful where the console script is not on PATH)."""

from attnopt.cli import app

if __name__ == "__main__":
    app(prog_name="attnopt")
