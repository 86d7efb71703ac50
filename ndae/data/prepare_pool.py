"""Preparing several subjects at once: worker processes, one thread each, results in order.

Registration is CPU-bound and single scans do not use many cores well, so `ndae prepare` runs one
subject per worker process. Each worker is limited to one BLAS/OpenMP/ITK/torch thread (else N
workers times N threads each would oversubscribe the machine) and dies with the process that
started it (Linux: PR_SET_PDEATHSIG), so a killed `prepare` leaves no orphan. Results come back in
the order the subjects were given, so the parent writes the cache and lists failures exactly as a
serial run does; at most two results per worker wait to be written, which bounds memory.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

# More workers than this gains nothing for a hospital-sized manifest and costs memory.
MAX_DEFAULT_JOBS = 32
THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)


def default_prepare_jobs() -> int:
    """The cores this process may use, at most `MAX_DEFAULT_JOBS`."""
    from ndae.cli_types import cores

    return min(cores(), MAX_DEFAULT_JOBS)


def check_prepare_jobs(jobs) -> int:
    """`jobs` as a whole number from 1 to the project's bound on worker processes, else NdaeError."""
    from ndae.cli_types import check_jobs

    return check_jobs("--jobs", jobs)


def limit_worker_threads() -> None:
    """Worker initializer: one thread per library, and die with the parent."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    if "torch" in sys.modules:  # imported with the parent's main module: its pool already exists
        sys.modules["torch"].set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    from ndae.child_processes import die_with_parent

    die_with_parent()


@contextmanager
def ordered_map(function: Callable, items: Iterable, jobs: int) -> Iterator[Iterator]:
    """`map(function, items)` over `jobs` worker processes (in this process when `jobs` is 1 or
    there is at most one item), yielding results in the items' order. Leaving the block early (an
    error while the caller writes a result) cancels what has not started."""
    items = list(items)
    if jobs <= 1 or len(items) <= 1:
        yield (function(item) for item in items)
        return
    workers = min(jobs, len(items))
    # Spawn, not fork: the parent may hold threads (torch, ITK) that a forked child would inherit locked.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=limit_worker_threads)

    def results() -> Iterator:
        pending: deque = deque()
        queue = iter(items)
        for item in queue:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            for item in queue:  # keep the window full
                pending.append(pool.submit(function, item))
                break
            yield result

    try:
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
