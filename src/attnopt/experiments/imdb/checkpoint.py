"""A training run's checkpoint: written atomically after an epoch, read back with
``torch.load(weights_only=True)`` only (tensors and plain data: a file from someone else can
never run code here), so that a run restarted in its folder continues bit for bit.

The members of one training process (an ensemble, or a single run) save an epoch in two
phases, so that a kill at any moment leaves their checkpoints at one epoch: each member first
writes ``checkpoint.next.pt``; then a commit file (``checkpoint.commit.json`` in the ensemble's
folder) names the round's members, the pending files replace the checkpoints, and the commit
file goes.  :func:`settle` on resume finishes a committed round and discards an unfinished one.

It holds the configuration, the epoch, the model's and the optimiser's state dicts, the
data-order generator and the dropout generators of every process (as byte tensors), the
per-epoch history and why the run stopped.  Members of an ensemble also record the ensemble
they belong to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from attnopt.errors import CheckpointError
from attnopt.files import atomic_torch_save, atomic_write_bytes, load_checkpoint

CHECKPOINT = "checkpoint.pt"
PENDING = "checkpoint.next.pt"
COMMIT = "checkpoint.commit.json"
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


def pending(path: Path) -> Path:
    """Where a member's checkpoint is written before its round commits."""
    return path.with_name(PENDING)


def commit(paths: list[Path], folder: Path) -> None:
    """Phase 2 of a save round: ``paths`` (checkpoint files whose :func:`pending` files are all
    written) are named in ``folder``'s commit file, then each pending file replaces its checkpoint."""
    if not paths:
        return
    marker = folder / COMMIT
    atomic_write_bytes(marker, json.dumps([os.path.relpath(p, folder) for p in paths]).encode())
    _finish(marker)


_replace = os.replace  # one member's phase 2 (a name of its own, for the tests' injected kill)


def _finish(marker: Path) -> None:
    for rel in json.loads(marker.read_text()):
        target = marker.parent / rel
        if pending(target).is_file():
            _replace(pending(target), target)
    marker.unlink()


def settle(paths: list[Path], folder: Path) -> list[str]:
    """Before resuming: finish the round ``folder``'s commit file names (its pending files are
    complete), then discard pending files of a round that never committed (killed while its
    members were saving: their checkpoints stay at the epoch before).  Returns notes."""
    notes = []
    marker = folder / COMMIT
    if marker.is_file():
        try:
            _finish(marker)
        except (ValueError, TypeError) as exc:  # a damaged commit file: atomic writes make this a bug elsewhere
            raise CheckpointError(f"{marker} is damaged ({exc}); {RESUME_HINT}") from None
        notes.append(f"finished an interrupted checkpoint save in {folder}")
    for path in paths:
        if pending(path).is_file():
            pending(path).unlink()
            notes.append(f"discarded {pending(path)}: its save round was interrupted before every member had saved")
    return notes


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


__all__ = ["CHECKPOINT", "PENDING", "COMMIT", "pending", "commit", "settle", "FORMAT", "RESUME_HINT", "rng_state", "set_rng_state", "save_checkpoint", "read_checkpoint",
           "model_state"]
