"""What the IMDB test modules share: whether the shared data is here, a tiny model setting, an
easy sentiment subset of real SST-2 sentences, and reading a run's checkpoint."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from attnopt.data import reviews
from attnopt.data.shared import data_root

HAVE_DATA = (data_root() / reviews.DATASET_FILES["sst2"]).is_file() and (
    data_root() / reviews.TOKENIZER_FILE).is_file()
HAVE_IMDB = HAVE_DATA and (data_root() / reviews.DATASET_FILES["imdb"]).is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="shared data folder not available")

#: a model small enough for a CPU test: 1 block, 1 head, width 32, 32 tokens, batches of 20
TINY = dict(dataset="sst2", max_len=32, size=1, n_embd=32, n_hidden=64, batch_size=20, device="cpu")

POS = {"great", "best", "wonderful", "beautiful", "excellent", "good", "fun", "funny", "enjoyable", "love",
       "charming", "brilliant", "moving", "delightful", "fine"}
NEG = {"bad", "worst", "dull", "boring", "awful", "stupid", "mess", "tedious", "poor", "flat", "lame", "waste",
       "terrible", "unfunny", "pointless"}


@pytest.fixture(scope="session")
def easy_data():
    """Short SST-2 train sentences whose polarity is carried by one strong sentiment word
    (150 + 150 train, 50 + 50 validation, 100 + 100 test)."""
    if not HAVE_DATA:
        pytest.skip("shared data folder not available")
    tab = reviews.read_table("sst2", columns=["text", "label", "split"])
    pos, neg = [], []
    for text, label, split in zip(*(tab.column(c).to_pylist() for c in ("text", "label", "split"))):
        words = set(re.findall(r"[a-z']+", text.lower()))
        if split != "train" or not 3 <= len(words) <= 12:
            continue
        if label == 1 and words & POS and not words & NEG:
            pos.append(text)
        elif label == 0 and words & NEG and not words & POS:
            neg.append(text)
    rng = np.random.default_rng(0)
    rng.shuffle(pos)
    rng.shuffle(neg)

    def part(a, b):
        return pos[a:b] + neg[a:b], [1] * (b - a) + [0] * (b - a)

    return reviews.review_data_from_texts(part(0, 150), part(150, 200), part(200, 300), max_len=32,
                                          dataset="sst2")


def model_state(path):
    """A run folder's checkpoint (loaded as plain data, as attnopt does)."""
    return torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=True)
