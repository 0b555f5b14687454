"""E3–E6 on IMDB / SST-2: training the paper's encoder classifier with ℓp mirror descent and
baselines, alone or as a seed ensemble in one process, and the analyses of trained runs.

* :mod:`.config` — :class:`TrainConfig` (the ``honest`` and ``paper`` protocols),
  :class:`EnsembleConfig`, the paper's learning rates and E3 table;
* :mod:`.batching` — padded and padding-free (packed) batches, length-sorted evaluation;
* :mod:`.engine` — the training loop of K members at once, evaluation, NaN stops;
* :mod:`.checkpoint` — atomic checkpoints loaded as plain tensors only;
* :mod:`.execution` — device, torchrun, precision, the optimisers;
* :mod:`.train` — :func:`run_train` and :func:`run_ensemble` (the experiment contract);
* :mod:`.runs` — reading runs back and the E3/E6 table;
* :mod:`.sparsity` (E4), :mod:`.attention` and :mod:`.probe` (E5).
"""

from attnopt.experiments.imdb.batching import DeviceSplit, packed_batch, padded_batch
from attnopt.experiments.imdb.checkpoint import CHECKPOINT
from attnopt.experiments.imdb.config import (BASELINE_LR, OPTIMIZERS, PAPER_E3, PAPER_LR, EnsembleConfig,
                                             NoDefaultLearningRate, TrainConfig)
from attnopt.experiments.imdb.engine import STOP_FILE, NonFiniteLoss, evaluate, train_step
from attnopt.experiments.imdb.execution import make_optimizer, resolve_device
from attnopt.experiments.imdb.runs import find_runs, format_table, load_model, read_run, results_table, run_histories
from attnopt.experiments.imdb.train import (EnsembleResult, TrainResult, run_ensemble, run_report, run_train,
                                            summarize_history)

__all__ = [
    "TrainConfig", "EnsembleConfig", "run_train", "run_ensemble", "TrainResult", "EnsembleResult", "NonFiniteLoss",
    "NoDefaultLearningRate", "evaluate", "train_step", "make_optimizer", "resolve_device", "summarize_history",
    "run_report", "read_run", "load_model", "find_runs", "run_histories", "results_table", "format_table",
    "DeviceSplit", "packed_batch", "padded_batch", "PAPER_LR", "PAPER_E3", "BASELINE_LR", "OPTIMIZERS",
    "CHECKPOINT", "STOP_FILE",
]
