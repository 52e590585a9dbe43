"""Process-level settings for the commands that run inference: how memory is kept, and how the process ends.

Inference allocates and frees arrays of hundreds of MB per case (the CT, its float copy, probabilities, masks).
glibc's ``malloc`` serves allocations above 32 MB with ``mmap`` and hands them back to the kernel on ``free``, so
every case pays for the kernel zeroing those pages again (hundreds of thousands of page faults per large
volume). :func:`keep_freed_memory` asks ``malloc`` to keep freed memory for reuse instead
(``docs/performance.md`` has the measurements). It changes no result, only where memory comes from.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import NoReturn

logger = logging.getLogger(__name__)

#: set to 0 to leave the C library's allocator as it is
ENV_KEEP_FREED_MEMORY = "MONAI_PIPELINE_KEEP_FREED_MEMORY"

# glibc <malloc.h> parameter numbers for mallopt()
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_INT_MAX = 2**31 - 1
_kept = False


def keep_freed_memory() -> bool:
    """On glibc (Linux), make this process's ``malloc`` keep freed memory for the next allocation: one arena
    (threads share it, so an array read by the background reader is reused too), no ``mmap`` for large blocks,
    and no trimming of the heap below 2 GiB of free space. The price is that the process keeps its peak heap
    until it exits (peak RSS +0.05-0.07 GB for a 512 x 512 x 300 volume). Same as starting Python with
    ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``.

    Returns True when applied; False elsewhere (macOS, Windows, musl) or when the environment variable
    :data:`ENV_KEEP_FREED_MEMORY` is ``0``. Call it once, early: ``monai-pipeline infer`` does; a Python script
    or bundle run may."""
    if os.environ.get(ENV_KEEP_FREED_MEMORY, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))
    global _kept
    applied = all(mallopt(param, value) == 1 for param, value in settings)
    logger.debug("malloc keeps freed memory: %s", applied)
    _kept = _kept or applied
    return applied


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process (helper processes of a batch repeat it)."""
    return _kept


def end_process(code: int) -> NoReturn:
    """End this process now with exit status ``code``, without the interpreter's teardown.

    With torch and MONAI loaded, Python's finalization (clearing thousands of modules, running the libraries'
    static destructors) takes about a second (docs/performance.md) and produces nothing. Only for a process
    whose outputs are all written, closed and renamed -- ``monai-pipeline infer``
    and its helper processes: logging handlers and the standard streams are flushed here first. ``atexit``
    functions do not run."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be written there anyway
            pass
    os._exit(code)
