"""One engine per data directory: an exclusive advisory lock on `<dir>/LOCK`.

Two processes appending to one WAL and one catalog would corrupt both, and nothing
else stops a second `tidestore serve` (or an offline `recover`) on a directory a
running node uses. The kernel drops the lock when the process dies, so a crash never
leaves it behind.
"""

from __future__ import annotations

import fcntl
import os

from .errors import EngineError


class DirectoryInUse(EngineError):
    """Another process has this data directory open."""


class DirLock:
    def __init__(self, directory: str):
        self.path = os.path.join(directory, "LOCK")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise DirectoryInUse(f"{directory} is in use by another process "
                                 "(a running node, or another tool on it)") from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = -1
