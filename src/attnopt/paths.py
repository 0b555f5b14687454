"""Where attnopt reads shared data and keeps its caches, for every package that needs a folder.

* The **data root** (files no package ships: IMDB, SST-2, the tokenizer, the E5 probes), in
  order: an explicit argument (the CLI's ``--data``), ``$ATTNOPT_DATA``, ``../shared/data``
  beside the checkout this package was installed from, ``../shared/data`` beside the working
  directory.
* The **cache folder** (token caches, the optimizer's compiled CPU kernel), in order: an
  explicit argument (``--cache``), ``$ATTNOPT_CACHE``, ``~/.cache/attnopt``.

Nothing here creates a folder or reads a file: callers do, and report their own errors.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "ATTNOPT_DATA"
CACHE_ENV_VAR = "ATTNOPT_CACHE"


def repo_root() -> Path | None:
    """The source checkout this package runs from (the folder holding ``pyproject.toml``), if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").exists():
            return parent
    return None


def _given(explicit: str | os.PathLike | None, env_var: str) -> Path | None:
    """The folder named by the caller, else by the environment variable, else None."""
    value = explicit if explicit is not None else (os.environ.get(env_var) or None)
    return None if value is None else Path(value).expanduser()


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The shared data folder (search order in the module docstring)."""
    given = _given(root, DATA_ENV_VAR)
    if given is not None:
        return given
    repo = repo_root()
    if repo is not None and (repo.parent / "shared" / "data").is_dir():
        return repo.parent / "shared" / "data"
    return Path.cwd().parent / "shared" / "data"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``path``, else ``$ATTNOPT_CACHE``, else ``~/.cache/attnopt``."""
    return _given(path, CACHE_ENV_VAR) or Path.home() / ".cache" / "attnopt"
