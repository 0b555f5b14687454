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


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The shared data folder (search order in the module docstring)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    repo = repo_root()
    if repo is not None and (repo.parent / "shared" / "data").is_dir():
        return repo.parent / "shared" / "data"
    return Path.cwd().parent / "shared" / "data"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``path``, else ``$ATTNOPT_CACHE``, else ``~/.cache/attnopt``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "attnopt"
