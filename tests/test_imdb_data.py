"""IMDB / SST-2 data: known facts, splits, tokenisation, token cache, bad input."""

import numpy as np
import pytest

from attnopt.data import reviews
from attnopt.data.shared import DataError, data_root

HAVE_DATA = (data_root() / reviews.DATASET_FILES["imdb"]).is_file() and (
    data_root() / reviews.TOKENIZER_FILE).is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="shared data folder not available")


@needs_data
def test_known_facts_of_the_data_readme():
    f = reviews.data_facts()
    assert f["imdb_rows"] == 50_000
    assert f["imdb_distinct_texts"] == 49_582
    assert f["imdb_train_test_overlap"] == 123
    assert f["imdb_per_split_class"] == {"train/0": 12_500, "train/1": 12_500, "test/0": 12_500, "test/1": 12_500}
    assert f["imdb_val"] == {0: 2_500, 1: 2_500} and f["imdb_val_all_in_train"]
    assert f["sst2_rows"] == 67_349 + 872
    assert f["sst2_per_split_class"] == {"train/0": 29_780, "train/1": 37_569, "dev/0": 428, "dev/1": 444}


@needs_data
def test_splits_are_disjoint_and_sized():
    r = reviews.split_rows("imdb")
    assert {k: len(v) for k, v in r.items()} == {"train": 20_000, "val": 5_000, "test": 25_000}
    assert not set(r["train"]) & set(r["val"]) and not set(r["train"]) & set(r["test"])
    assert len(reviews.split_rows("imdb", val_in_train=True)["train"]) == 25_000
    s = reviews.split_rows("sst2")
    assert {k: len(v) for k, v in s.items()} == {"train": 67_349 - 2_000, "val": 2_000, "test": 872}
    assert not set(s["train"]) & set(s["val"])
    np.testing.assert_array_equal(s["val"], reviews.split_rows("sst2")["val"])  # fixed, not run-seeded


@needs_data
def test_truncation_keeps_cls_first():
    long_text = " ".join(["wonderful"] * 100)
    ids = reviews.encode_texts([long_text, "short one"], max_len=16)
    assert len(ids[0]) == 16 and ids[0][0] == reviews.CLS_ID and reviews.SEP_ID not in ids[0]
    assert ids[1][0] == reviews.CLS_ID and ids[1][-1] == reviews.SEP_ID and len(ids[1]) < 16
    with pytest.raises(ValueError):
        reviews.encode_texts(["x"], max_len=1)


@needs_data
def test_token_cache_roundtrip_and_key(tmp_path, monkeypatch):
    d1 = reviews.load_reviews("sst2", max_len=24, subset=60, eval_subset=20, cache=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "sst2-L24-sub60-20" in files[0].name
    assert d1.sizes() == {"train": 60, "val": 20, "test": 20}
    assert d1.train.labels.sum() == 30 and d1.val.labels.sum() == 10  # class-balanced
    assert (d1.train.ids[:, 0] == reviews.CLS_ID).all() and d1.train.lengths.max() <= 24

    def boom(*a, **k):
        raise AssertionError("tokenised again instead of using the cache")

    monkeypatch.setattr(reviews, "_tokenize_splits", boom)
    d2 = reviews.load_reviews("sst2", max_len=24, subset=60, eval_subset=20, cache=tmp_path)
    for s in reviews.SPLITS:
        a, b = d1.split(s), d2.split(s)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.rows, b.rows)
    monkeypatch.undo()
    reviews.load_reviews("sst2", max_len=24, subset=40, eval_subset=20, cache=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # the subset is part of the key
    monkeypatch.setenv(reviews.CACHE_ENV_VAR, str(tmp_path / "env"))
    assert reviews.cache_dir() == tmp_path / "env"


@needs_data
def test_imdb_subset_is_small_and_balanced(tmp_path):
    d = reviews.load_reviews("imdb", max_len=32, subset=40, eval_subset=10, cache=tmp_path)
    assert d.sizes() == {"train": 40, "val": 10, "test": 10}
    rows = reviews.split_rows("imdb")
    assert set(d.val.rows) <= set(rows["val"]) and set(d.train.rows) <= set(rows["train"])


def test_missing_and_corrupted_files_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        reviews.load_reviews("sst2", max_len=16, subset=10, data_root=tmp_path, cache=tmp_path / "c")
    bad = tmp_path / "sst2" / "sst2_glue.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match="checksum mismatch"):
        reviews.read_table("sst2", data_root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        reviews.load_reviews("yelp")
