"""The ``attnopt`` command line: the root app, its global options and the command groups.

    attnopt [--version] [--debug] demo | synthetic … | convex … | imdb … | vision …

Each group lives in its own module (``synthetic``, ``convex``, ``imdb``, ``vision``) and imports heavy code
(torch, the experiments) inside its commands, so ``attnopt --help`` stays fast.  A command turns
its options into a config, opens the run folder, calls the experiment's ``run_x`` and prints
the result's table; errors follow the policy in :mod:`attnopt.cli._common`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from attnopt.cli import _common
from attnopt.cli._common import AttnoptGroup

app = typer.Typer(
    name="attnopt",
    cls=AttnoptGroup,
    help="Optimizing attention: ℓp mirror descent, max-margin attention SVMs, convex attention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from attnopt import __version__

        typer.echo(f"attnopt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of user errors too.")] = False,
) -> None:
    """Optimizing attention: ℓp mirror descent, max-margin attention SVMs, convex attention."""
    if debug:
        _common.DEBUG["on"] = True


from attnopt.cli import convex as _convex  # noqa: E402
from attnopt.cli import imdb as _imdb  # noqa: E402
from attnopt.cli import synthetic as _synthetic  # noqa: E402
from attnopt.cli import vision as _vision  # noqa: E402

app.command("demo")(_synthetic.demo)
app.add_typer(_synthetic.app, name="synthetic")
app.add_typer(_convex.app, name="convex")
app.add_typer(_imdb.app, name="imdb")
app.add_typer(_vision.app, name="vision")



def run() -> None:
    """The ``attnopt`` console script."""
    _common.run_app(app, prog_name="attnopt")


__all__ = ["app", "run"]

if __name__ == "__main__":  # pragma: no cover
    run()
