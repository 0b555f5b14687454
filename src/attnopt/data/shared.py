"""Locating and verifying the data files that no package ships (``../shared/data``).

The folder is found, in order, from: an explicit ``root`` argument (the CLI's ``--data``),
the ``ATTNOPT_DATA`` environment variable, ``../shared/data`` relative to the repository
root (the checkout this package was installed from), and ``../shared/data`` relative to the
working directory.  Every file is checked against its published sha256 before use; a
missing or altered file raises :class:`DataError` with what was expected and where.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from attnopt.errors import UserError
from attnopt.paths import DATA_ENV_VAR, data_root

ENV_VAR = DATA_ENV_VAR

#: sha256 of each file, from ``shared/data/README.md``.
CHECKSUMS: dict[str, str] = {
    "imdb/imdb_50k.parquet": "b4ec8d530a6b33b54d992e61fe9ebc7607c68bcef1616df01fe7960e1c3e816b",
    "sst2/sst2_glue.parquet": "0a3252a37b630ea3eb14e89019374b02ebf7f2c2ebdaaa86ce6df971bf803005",
    "tokenizers/bert-base-uncased/tokenizer.json": "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66",
    "tokenizers/bert-base-uncased/vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "e5_probes/e5_probes.csv": "b2bc664925a93531771c1ab837a82f6cbb68cf1f24fbcc41cd05c5c0740a70e6",
}

_verified: dict[tuple[str, int, int], str] = {}


class DataError(UserError, RuntimeError):
    """A shared data file is missing, unreadable, or fails its checksum."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def shared_file(relpath: str, root: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Path of a shared data file, checked to exist and (for known files) to match its sha256."""
    base = data_root(root)
    path = base / relpath
    if not path.is_file():
        raise DataError(
            f"data file not found: {path}\n"
            f"  attnopt looks for the shared data folder in --data, ${ENV_VAR}, or ../shared/data "
            f"beside the repository; set {ENV_VAR}=/path/to/shared/data to point at it."
        )
    expected = CHECKSUMS.get(relpath)
    if verify and expected is not None:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        got = _verified.get(key) or sha256_file(path)
        if got != expected:
            raise DataError(
                f"checksum mismatch for {path}: expected sha256 {expected}, got {got}. "
                "The file is corrupted or not the published version; restore it from the shared folder."
            )
        _verified[key] = got
    return path
