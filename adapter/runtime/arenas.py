"""glibc's malloc arenas, limited for the processes' life: `limit_malloc_arenas()` at start-up.

glibc gives each thread that allocates under contention an arena of its own, up to 8 per core,
and memory freed in one arena is not reused by another. The frontend's threads (grpc's, and
librdkafka's per broker) each pass 10 KiB payloads through, so its RSS grew with the number of
arenas rather than with the calls in flight: with 1,000 calls of 10 KiB in flight it peaked at
144 and 152 MB with glibc's default, 121 and 117 MB with two arenas (two runs each,
docs/performance.md). Python's own small objects come from pymalloc under the GIL, so fewer
arenas cost no measurable throughput.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

#: Arenas a process keeps when MALLOC_ARENA_MAX does not say otherwise.
ARENAS = 2
#: mallopt's parameter number for the arena limit (glibc's malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at `arenas`, unless MALLOC_ARENA_MAX is set (glibc applied it
    already) or the C library is not glibc (musl has no arenas). True if the cap was set here.

    Call it before the process starts threads: arenas already made stay."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(_M_ARENA_MAX, arenas) == 1
    if not done:
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
    return done
