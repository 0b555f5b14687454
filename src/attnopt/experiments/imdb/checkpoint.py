"""A training run's checkpoint: written atomically after an epoch, read back with
``torch.load(weights_only=True)`` only (tensors and plain data: a file from someone else can
never run code here), so that a run restarted in its folder continues bit for bit.

It holds the configuration, the epoch, the model's and the optimiser's state dicts, the
data-order generator and the dropout generators of every process (as byte tensors), the
per-epoch history and why the run stopped.  Members of an ensemble also record the ensemble
they belong to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from attnopt.errors import CheckpointError
from attnopt.files import atomic_torch_save, load_checkpoint

CHECKPOINT = "checkpoint.pt"
FORMAT = 2
RESUME_HINT = "start over with --no-resume (or choose another --out)"


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The torch generators a training step draws from (dropout), as byte tensors."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, *, config: dict, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    data_gen: torch.Generator, rng: list[dict], history: list[dict], stop_reason: str | None,
                    ensemble: dict | None = None, best: dict | None = None) -> None:
    """``best``: the validation-selected weights and the final test pass (``best``,
    ``best_epoch``, ``best_val``, ``final``) of a run with ``final_test``; absent keys read as none."""
    atomic_torch_save({**(best or {}),
        "format": FORMAT,
        "config": config,
        "epoch": int(epoch),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "data_gen": data_gen.get_state(),
        "rng": rng,
        "history": history,
        "stop_reason": stop_reason,
        "ensemble": ensemble,
    }, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents; a damaged, foreign or unsafe file is a one-line CheckpointError."""
    ck = load_checkpoint(path, hint=RESUME_HINT)
    if not isinstance(ck, dict) or "model" not in ck or "epoch" not in ck:
        raise CheckpointError(f"checkpoint {path} is not an attnopt IMDB training checkpoint; {RESUME_HINT}")
    if ck.get("format", 1) != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {ck.get('format', 1)}, this attnopt writes {FORMAT}; "
                              f"{RESUME_HINT}")
    return ck


def _numpy_array_globals() -> list:
    """What unpickling a plain numpy array needs: checkpoints of format 1 (attnopt before the
    IMDB package) hold numpy's RNG state as one.  Arrays and dtypes only, no callables."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def model_state(path: Path) -> dict[str, torch.Tensor]:
    """Only the model weights of a checkpoint (for the analyses); reads format 1 too."""
    with torch.serialization.safe_globals(_numpy_array_globals()):
        ck = load_checkpoint(path, hint="retrain the run")
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} holds no model weights")
    return ck["model"]


__all__ = ["CHECKPOINT", "FORMAT", "RESUME_HINT", "rng_state", "set_rng_state", "save_checkpoint", "read_checkpoint",
           "model_state"]
