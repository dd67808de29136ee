"""Process policy for the numba kernels (multigrid and normal integration): threading layer,
threads per grid size, and forked children.

Importing this module sets numba's threading layer priority; :func:`threads_for` caps the threads
for one solve; :func:`kernel` swaps a parallel kernel for a single-threaded twin in a process
forked after the parallel kernels ran (GNU OpenMP cannot start threads there).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numba
from numba import njit

# OpenMP first for the parallel loops (numba's default tries TBB first, which warns when the TBB found
# is too old; the fallback stays TBB, then numba's own work queue).
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

_OPENMP_PID: int | None = None  # the process that first ran the parallel kernels
_SERIAL: dict = {}  # parallel kernel -> its single-threaded twin, for forked children


def forked_child() -> bool:
    """Whether this process was forked from one that had already run the parallel kernels. GNU
    OpenMP cannot start threads in such a child (numba terminates it), so there they run on one
    thread."""
    global _OPENMP_PID
    pid = os.getpid()
    if _OPENMP_PID is None:
        _OPENMP_PID = pid
    return pid != _OPENMP_PID


# At most one thread per this many grid pixels (see threads_for).
PIXELS_PER_THREAD = 8192


@contextlib.contextmanager
def threads_for(pixels: int) -> Iterator[None]:
    """Run the parallel kernels on at most one thread per PIXELS_PER_THREAD pixels of a grid (never
    more than numba's count): a small grid spread over many cores would spend its time starting and
    joining threads. Measured on 2 cores: a 256^2 view of a bottle, 96 x 206 pixels, took 30 ms on
    one thread (the earlier rule, one thread per 64 rows) and 22 ms on two."""
    if forked_child():
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(before, pixels // PIXELS_PER_THREAD)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def kernel(fn):
    """The parallel numba kernel ``fn``, or in a forked child (see :func:`forked_child`) a
    single-threaded twin compiled from the same code on first use there."""
    if not forked_child():
        return fn
    if fn not in _SERIAL:
        _SERIAL[fn] = njit(fn.py_func)
    return _SERIAL[fn]
