"""IMDB and SST-2 sentiment data: loading, splits, tokenisation and an on-disk token cache.

Both datasets come from the shared data folder (checksum-verified through
:func:`attnopt.data.shared.shared_file`) and are tokenised with the shared uncased BERT
WordPiece tokenizer (``tokenizers.Tokenizer.from_file``; vocab 30,522, ``[PAD]=0``,
``[CLS]=101``, ``[SEP]=102``).

Splits
------
* ``imdb``: *train* = the 20,000 official-train reviews with ``src_dir == "train"``,
  *val* = the fixed 5,000-review validation subset (``src_dir == "val"``, carved from the
  official train split, 2,500 per class), *test* = the official 25,000-review test split.
  ``val_in_train=True`` reproduces the paper's protocol of training on all 25,000 official
  train reviews (the validation number is then no longer held out).
* ``sst2``: *test* = GLUE's labelled dev set (872 sentences; GLUE's test labels are not
  public), *val* = a fixed, class-stratified 2,000-sentence subset of GLUE train chosen with
  a constant seed (independent of the run seed), *train* = the remaining 65,349 sentences.

Tokenisation follows the paper's code: the review is encoded with ``[CLS] ... [SEP]`` and
the id sequence is cut to its first ``max_len`` ids, so ``[CLS]`` always stays first (a
truncated review loses its ``[SEP]``).

Cache
-----
Token ids are cached once per (tokenizer, dataset file, dataset, max length, subset, text
cleaning) in ``$ATTNOPT_CACHE`` (default ``~/.cache/attnopt``) as an ``.npz`` file whose
name carries the key; writes are atomic.  ``subset``/``eval_subset`` pick a class-balanced,
seeded subset of each split *before* tokenising, so quick runs never tokenise all 50,000
reviews.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from attnopt.data.shared import CHECKSUMS, DataError, shared_file
from attnopt.errors import UserError
from attnopt.files import atomic_write_bytes, writable_folder
from attnopt.paths import CACHE_ENV_VAR, cache_dir  # noqa: F401  (CACHE_ENV_VAR: re-exported)
from attnopt.runtime import ProgressFn

PAD_ID = 0
UNK_ID = 100
CLS_ID = 101
SEP_ID = 102
VOCAB_SIZE = 30522

TOKENIZER_FILE = "tokenizers/bert-base-uncased/tokenizer.json"
DATASET_FILES = {
    "imdb": "imdb/imdb_50k.parquet",
    "sst2": "sst2/sst2_glue.parquet",
}
DATASETS = tuple(DATASET_FILES)
SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1

#: SST-2: size of the fixed validation subset carved from GLUE train, and its seed.
SST2_VAL_SIZE = 2000
SST2_VAL_SEED = 20131018


class ReviewDataError(UserError, ValueError):
    """A request the review data cannot serve: an unknown dataset, a bad length or subset size."""


def check_dataset(name: str) -> str:
    key = str(name).lower().replace("-", "")
    if key not in DATASET_FILES:
        raise ReviewDataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return key


# --------------------------------------------------------------------------- tokenizer

_TOKENIZERS: dict[str, object] = {}


def load_tokenizer(data_root: str | os.PathLike | None = None):
    """The shared BERT WordPiece tokenizer (checksum-verified; no truncation or padding)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - dependency declared by the package
        raise DataError("the `tokenizers` package is needed to tokenise reviews: pip install tokenizers") from exc
    path = shared_file(TOKENIZER_FILE, data_root)
    key = str(path)
    if key not in _TOKENIZERS:
        tok = Tokenizer.from_file(str(path))
        tok.no_truncation()
        tok.no_padding()
        if tok.token_to_id("[PAD]") != PAD_ID or tok.token_to_id("[CLS]") != CLS_ID:
            raise DataError(f"{path}: unexpected special-token ids (need [PAD]=0, [CLS]=101)")
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def clean_text(text: str) -> str:
    """Replace the ``<br />`` line breaks kept in the IMDB texts by spaces."""
    return text.replace("<br />", " ").replace("<br/>", " ").replace("<br>", " ")


def encode_texts(texts: Sequence[str], max_len: int, tokenizer=None, data_root=None,
                 clean_html: bool = False, chunk: int = 2000,
                 progress: Callable[[int], None] | None = None) -> list[list[int]]:
    """Token ids of each text: ``[CLS] ... [SEP]`` cut to the first ``max_len`` ids."""
    if max_len < 2:
        raise ReviewDataError(f"max_len must be >= 2 (room for [CLS] and one token), got {max_len}")
    tok = tokenizer if tokenizer is not None else load_tokenizer(data_root)
    out: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        batch = [clean_text(t) if clean_html else t for t in texts[start:start + chunk]]
        for enc in tok.encode_batch(batch):
            out.append(enc.ids[:max_len])
        if progress is not None:
            progress(len(batch))
    return out


# --------------------------------------------------------------------------- containers


@dataclass
class TokenizedSplit:
    """One split as a padded id matrix ``ids`` (N, L) int32 (pad = 0) with lengths and labels.

    ``rows`` are the row numbers in the source parquet file (for tracing examples back).
    """

    ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    rows: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if not (len(self.ids) == len(self.lengths) == len(self.rows) == n):
            raise ValueError("TokenizedSplit: ids, lengths, labels and rows differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def max_len(self) -> int:
        return int(self.ids.shape[1]) if self.ids.ndim == 2 else 0

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], labels: Sequence[int],
                   rows: Sequence[int] | None = None, max_len: int | None = None) -> "TokenizedSplit":
        lengths = np.asarray([len(x) for x in ids], dtype=np.int32)
        width = int(max_len if max_len is not None else (lengths.max() if len(lengths) else 1))
        if len(lengths) and lengths.max() > width:
            raise ValueError(f"a sequence of {lengths.max()} ids does not fit max_len={width}")
        mat = np.zeros((len(ids), width), dtype=np.int32)
        for i, x in enumerate(ids):
            mat[i, : len(x)] = x
        rows_arr = np.arange(len(ids), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        return cls(mat, lengths, np.asarray(labels, dtype=np.int64), rows_arr)

    def take(self, index: np.ndarray) -> "TokenizedSplit":
        return TokenizedSplit(self.ids[index], self.lengths[index], self.labels[index], self.rows[index])

    @staticmethod
    def concat(parts: Sequence["TokenizedSplit"]) -> "TokenizedSplit":
        width = max(p.max_len for p in parts)
        mats = [np.pad(p.ids, ((0, 0), (0, width - p.max_len))) for p in parts]
        return TokenizedSplit(np.concatenate(mats), np.concatenate([p.lengths for p in parts]),
                              np.concatenate([p.labels for p in parts]),
                              np.concatenate([p.rows for p in parts]))


@dataclass
class ReviewData:
    """Train / validation / test splits of one dataset, tokenised."""

    train: TokenizedSplit
    val: TokenizedSplit
    test: TokenizedSplit
    dataset: str = "custom"
    max_len: int = 512
    meta: dict = field(default_factory=dict)
    #: a fixed held-out test subset scored once, with the validation-selected weights
    #: (``load_reviews(final_test=N)``); None when not asked for
    final: TokenizedSplit | None = None

    def split(self, name: str) -> TokenizedSplit:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in SPLITS}


# --------------------------------------------------------------------------- raw tables


def read_table(dataset: str, data_root=None, columns: Sequence[str] | None = None):
    """The dataset's parquet file as a ``pyarrow.Table`` (checksum-verified)."""
    dataset = check_dataset(dataset)
    path = shared_file(DATASET_FILES[dataset], data_root)
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - dependency declared by the package
        raise DataError("the `pyarrow` package is needed to read the review data: pip install pyarrow") from exc
    try:
        return pq.read_table(path, columns=list(columns) if columns else None)
    except Exception as exc:  # corrupted despite a matching checksum is unlikely; be clear anyway
        raise DataError(f"cannot read {path} as parquet: {exc}") from exc


def split_rows(dataset: str, data_root=None, val_in_train: bool = False) -> dict[str, np.ndarray]:
    """Row numbers of the train / val / test splits (see the module docstring)."""
    dataset = check_dataset(dataset)
    if dataset == "imdb":
        tab = read_table(dataset, data_root, ["split", "src_dir"])
        split = np.asarray(tab.column("split").to_pylist(), dtype=object)
        src = np.asarray(tab.column("src_dir").to_pylist(), dtype=object)
        rows = {
            "train": np.flatnonzero((split == "train") & ((src == "train") | (src == "val") & val_in_train)),
            "val": np.flatnonzero((split == "train") & (src == "val")),
            "test": np.flatnonzero(split == "test"),
        }
    else:
        tab = read_table(dataset, data_root, ["split", "label"])
        split = np.asarray(tab.column("split").to_pylist(), dtype=object)
        label = np.asarray(tab.column("label").to_pylist(), dtype=np.int64)
        train_all = np.flatnonzero(split == "train")
        rng = np.random.default_rng(SST2_VAL_SEED)
        val_parts = []
        for c in (0, 1):
            members = train_all[label[train_all] == c]
            k = int(round(SST2_VAL_SIZE * len(members) / len(train_all)))
            val_parts.append(rng.choice(members, size=k, replace=False))
        val = np.sort(np.concatenate(val_parts))
        train = train_all if val_in_train else np.setdiff1d(train_all, val)
        rows = {"train": train, "val": val, "test": np.flatnonzero(split == "dev")}
    return rows


def balanced_subset(rows: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded subset of ``rows`` with ``n`` entries, half from each class (sorted)."""
    if n <= 0:
        raise ReviewDataError(f"subset size must be positive, got {n}")
    if n >= len(rows):
        return np.sort(rows)
    rng = np.random.default_rng(seed)
    pos = rows[labels[rows] == 1]
    neg = rows[labels[rows] == 0]
    n_pos = n // 2
    n_neg = n - n_pos
    if n_pos > len(pos) or n_neg > len(neg):  # pragma: no cover - only for tiny, skewed splits
        n_pos = min(n_pos, len(pos))
        n_neg = min(n - n_pos, len(neg))
    chosen = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
    return np.sort(chosen)


# --------------------------------------------------------------------------- cache


def _file_sha(relpath: str, data_root=None) -> str:
    from attnopt.data.shared import sha256_file

    return CHECKSUMS.get(relpath) or sha256_file(shared_file(relpath, data_root))


def cache_key(dataset: str, max_len: int, subset: int | None, eval_subset: int | None,
              data_seed: int, clean_html: bool, data_root=None, final_test: int | None = None) -> tuple[str, str]:
    """(file name, full key json) of the token cache for these settings."""
    dataset = check_dataset(dataset)
    spec = {
        "format": CACHE_FORMAT,
        "tokenizer_sha256": _file_sha(TOKENIZER_FILE, data_root),
        "data_sha256": _file_sha(DATASET_FILES[dataset], data_root),
        "dataset": dataset,
        "max_len": int(max_len),
        "subset": None if subset is None else int(subset),
        "eval_subset": None if eval_subset is None else int(eval_subset),
        "data_seed": int(data_seed) if (subset or eval_subset) else None,
        "clean_html": bool(clean_html),
        "truncation": "head, [CLS] first",
    }
    if final_test is not None:  # only then, so that the caches made without it keep their names
        spec["final_test"] = int(final_test)
    text = json.dumps(spec, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    if subset is None and eval_subset is None:
        sub = "full"
    else:
        sub = f"sub{subset or 'all'}-{eval_subset or 'all'}-s{data_seed}"
    if final_test is not None:
        sub += f"-final{int(final_test)}"
    name = f"{dataset}-L{int(max_len)}-{sub}{'-clean' if clean_html else ''}-bertuncased-{digest}.npz"
    return name, text


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _pack(split: TokenizedSplit, prefix: str) -> dict[str, np.ndarray]:
    flat = np.concatenate([split.ids[i, : split.lengths[i]] for i in range(len(split))]) if len(split) else np.zeros(0)
    return {
        f"{prefix}_flat": flat.astype(np.uint16),
        f"{prefix}_lengths": split.lengths.astype(np.int32),
        f"{prefix}_labels": split.labels.astype(np.int8),
        f"{prefix}_rows": split.rows.astype(np.int64),
    }


def _unpack(z, prefix: str, max_len: int) -> TokenizedSplit:
    flat = z[f"{prefix}_flat"].astype(np.int32)
    lengths = z[f"{prefix}_lengths"].astype(np.int32)
    mat = np.zeros((len(lengths), max_len), dtype=np.int32)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    for i in range(len(lengths)):
        mat[i, : lengths[i]] = flat[starts[i]: ends[i]]
    return TokenizedSplit(mat, lengths, z[f"{prefix}_labels"].astype(np.int64), z[f"{prefix}_rows"].astype(np.int64))


def load_reviews(dataset: str = "imdb", max_len: int = 512, subset: int | None = None,
                 eval_subset: int | None = None, data_seed: int = 0, val_in_train: bool = False,
                 clean_html: bool = False, data_root=None, cache: str | os.PathLike | None = None,
                 use_cache: bool = True, progress: ProgressFn | None = None,
                 final_test: int | None = None) -> ReviewData:
    """Tokenised train / val / test splits of ``dataset`` (cached on disk).

    ``subset`` keeps a class-balanced seeded subset of ``subset`` training reviews and
    ``eval_subset`` (default: ``subset``) of each of val and test; ``None`` keeps everything.
    ``final_test`` adds :attr:`ReviewData.final`: a class-balanced subset of that many test
    reviews (all of them when it is at least the split's size), chosen by ``data_seed`` alone,
    so the same for every trial of a protocol.
    ``progress`` hears how many reviews have been tokenised (label "tokenising <dataset>").
    """
    dataset = check_dataset(dataset)
    if max_len < 2 or max_len > 512:
        raise ReviewDataError(f"max_len must be in [2, 512] (learned positions cover 512), got {max_len}")
    if eval_subset is None:
        eval_subset = subset
    # Cached splits never include val in train; ``val_in_train`` is applied after loading.
    name, key_text = cache_key(dataset, max_len, subset, eval_subset, data_seed, clean_html, data_root, final_test)
    names = SPLITS + (("final",) if final_test is not None else ())
    path = cache_dir(cache) / name
    if use_cache:  # before tokenising: a cache that cannot be written fails now, not minutes later
        writable_folder(path.parent, "cache folder", "--cache (or $ATTNOPT_CACHE)")
    splits: dict[str, TokenizedSplit] | None = None
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key_text:
                    splits = {s: _unpack(z, s, max_len) for s in names}
        except Exception:  # unreadable cache: rebuild it
            splits = None
    if splits is None:
        splits = _tokenize_splits(dataset, max_len, subset, eval_subset, data_seed, clean_html,
                                  data_root, progress, final_test)
        if use_cache:
            arrays = {"key": np.asarray(key_text)}
            for s in names:
                arrays.update(_pack(splits[s], s))
            _save_npz(path, arrays)
    if val_in_train:
        splits = dict(splits)
        splits["train"] = TokenizedSplit.concat([splits["train"], splits["val"]])
    meta = {"cache_file": str(path) if use_cache else None, "subset": subset, "eval_subset": eval_subset,
            "data_seed": data_seed, "val_in_train": val_in_train, "clean_html": clean_html,
            "final_test": final_test}
    return ReviewData(splits["train"], splits["val"], splits["test"], dataset=dataset, max_len=max_len, meta=meta,
                      final=splits.get("final"))


def _tokenize_splits(dataset, max_len, subset, eval_subset, data_seed, clean_html, data_root, progress,
                     final_test=None):
    rows = split_rows(dataset, data_root, val_in_train=False)
    tab = read_table(dataset, data_root, ["text", "label"])
    labels = np.asarray(tab.column("label").to_pylist(), dtype=np.int64)
    chosen = {}
    for i, s in enumerate(SPLITS):
        n = subset if s == "train" else eval_subset
        chosen[s] = rows[s] if n is None else balanced_subset(rows[s], labels, n, data_seed * 1000 + i)
    if final_test is not None:
        chosen["final"] = balanced_subset(rows["test"], labels, final_test, data_seed * 1000 + len(SPLITS))
    texts_col = tab.column("text")
    tok = load_tokenizer(data_root)
    total = sum(len(v) for v in chosen.values())
    label = f"tokenising {dataset}"
    out = {}
    for s in chosen:
        idx = chosen[s]
        texts = texts_col.take(idx).to_pylist()
        ids = encode_texts(texts, max_len, tok, clean_html=clean_html,
                           progress=(lambda k: progress(label, k, total)) if progress is not None else None)
        out[s] = TokenizedSplit.from_lists(ids, labels[idx], rows=idx, max_len=max_len)
    return out


def data_facts(data_root=None) -> dict:
    """Counts to check against the data README (cheap: reads label/split columns and texts)."""
    imdb = read_table("imdb", data_root, ["text", "label", "split", "src_dir"])
    split = np.asarray(imdb.column("split").to_pylist(), dtype=object)
    src = np.asarray(imdb.column("src_dir").to_pylist(), dtype=object)
    lab = np.asarray(imdb.column("label").to_pylist())
    texts = imdb.column("text").to_pylist()
    train_texts = {t for t, s in zip(texts, split) if s == "train"}
    test_texts = {t for t, s in zip(texts, split) if s == "test"}
    sst = read_table("sst2", data_root, ["label", "split"])
    ssplit = np.asarray(sst.column("split").to_pylist(), dtype=object)
    slab = np.asarray(sst.column("label").to_pylist())
    return {
        "imdb_rows": len(texts),
        "imdb_distinct_texts": len(set(texts)),
        "imdb_train_test_overlap": len(train_texts & test_texts),
        "imdb_per_split_class": {f"{s}/{c}": int(((split == s) & (lab == c)).sum())
                                 for s in ("train", "test") for c in (0, 1)},
        "imdb_val": {c: int(((src == "val") & (lab == c)).sum()) for c in (0, 1)},
        "imdb_val_all_in_train": bool(np.all(split[src == "val"] == "train")),
        "sst2_rows": len(ssplit),
        "sst2_per_split_class": {f"{s}/{c}": int(((ssplit == s) & (slab == c)).sum())
                                 for s in ("train", "dev") for c in (0, 1)},
    }


def review_data_from_texts(train: tuple[Sequence[str], Sequence[int]], val: tuple[Sequence[str], Sequence[int]],
                           test: tuple[Sequence[str], Sequence[int]], max_len: int, data_root=None,
                           dataset: str = "custom") -> ReviewData:
    """Build a :class:`ReviewData` from in-memory texts and labels (tests, custom probes)."""
    tok = load_tokenizer(data_root)
    parts = {}
    for s, (texts, labels) in zip(SPLITS, (train, val, test)):
        parts[s] = TokenizedSplit.from_lists(encode_texts(list(texts), max_len, tok), labels, max_len=max_len)
    return ReviewData(parts["train"], parts["val"], parts["test"], dataset=dataset, max_len=max_len)


__all__ = [
    "PAD_ID", "CLS_ID", "SEP_ID", "UNK_ID", "VOCAB_SIZE", "DATASETS", "SPLITS", "TokenizedSplit", "ReviewData",
    "cache_dir", "cache_key", "load_tokenizer", "encode_texts", "clean_text", "read_table", "split_rows",
    "balanced_subset", "load_reviews", "data_facts", "review_data_from_texts", "check_dataset", "ReviewDataError",
]
