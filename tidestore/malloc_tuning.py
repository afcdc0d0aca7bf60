"""Keep glibc's allocator from hoarding memory in a server that streams big buffers.

A node moves 4 MiB chunks through many threads (the I/O executor, the WAL publisher,
hashing lanes). glibc gives each contending thread its own arena (up to 8 per core) and
returns freed space to the kernel only from an arena's top, so chunk-sized buffers
scattered over many arenas leave the RSS ratcheting up with the amount of data moved:
measured on the streaming test, the peak while uploading a 256 MiB multipart object was
14-29 MiB above the peak for a 32 MiB one with the default arenas, and within 6 MiB with
two, at the same throughput (tests/s3/test_s3_streaming.py; other knobs, a fixed mmap or
trim threshold, also flatten it but cost 15-40% of upload throughput).

Called once, first thing in the server process, before any thread exists. An operator's
own MALLOC_ARENA_MAX in the environment wins; on a libc without mallopt this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # from glibc's malloc.h
DEFAULT_ARENAS = 2


def limit_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas; True if the cap was applied."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_ARENA_MAX, arenas) == 1
