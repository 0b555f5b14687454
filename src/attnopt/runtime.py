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


#: set by :func:`skip_finalisation` (see there)
_EXIT = {"skip_finalisation": False}


def skip_finalisation() -> None:
    """Mark this process to end through :func:`end_process` without Python's finalisation.

    Called after a gloo process group is torn down.  Measured (core dump of a rank that died
    with SIGABRT, "terminate called without an active exception", in 5 of 30 two-process
    torchrun runs of ``attnopt imdb train`` on a loaded 2-core machine, 0 of 30 since): a gloo
    worker thread (``ProcessGroupGloo::runLoop``) was still destroying a finished all-gather
    whose tensors' Python objects need the GIL while the main thread was in ``Py_FinalizeEx``;
    Python ends a thread that takes the GIL during finalisation with ``pthread_exit``, whose
    unwinding through that destructor calls ``std::terminate``.  The group outlives ``destroy_process_group()`` once a
    ``DistributedDataParallel`` was built on it (torch keeps references to it: its worker threads
    are still alive after the module is deleted and collected), so joining the threads first is
    not in our hands; leaving without finalisation is."""
    _EXIT["skip_finalisation"] = True


def end_process(code: object = 0) -> None:
    """Return normally, unless :func:`skip_finalisation` was called: then flush the standard
    streams and logging and leave at once with ``code`` (``sys.exit``'s meaning: None is 0, an
    integer itself, anything else is printed and gives 1)."""
    if not _EXIT["skip_finalisation"]:
        return
    import logging
    import os
    import sys

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        sys.stderr.write(f"{code}\n")
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
