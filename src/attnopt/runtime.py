"""What an experiment may touch besides its run folder: the progress callback it reports to,
and the process-wide settings it must give back (torch's thread count, the random generators).

Every experiment is ``run_x(config, *, out=None, progress=None) -> Result``; ``progress`` is a
:data:`ProgressFn` and any global the experiment changes is restored by these context managers.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

#: ``progress(label, advance, total)``: ``advance`` units of the task ``label`` (out of ``total``)
#: were done since the last call for that label.
ProgressFn = Callable[[str, int, int], None]


def report(progress: Optional[ProgressFn], label: str, advance: int, total: int) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(label, advance, total)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Cap torch's intra-op threads at ``n`` (None: leave them) and restore the old count."""
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python's, numpy's and torch's global random generators (CPU, and CUDA when it is
    initialised) afterwards, so that seeding inside an experiment does not leak out of it."""
    import numpy as np
    import torch

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextmanager
def experiment_scope(threads: int | None = None) -> Iterator[None]:
    """Both: a thread cap and the random generators restored on exit."""
    with preserved_rng(), torch_threads(threads):
        yield
