"""The ordered log every change goes through. Today: `LocalLog`, the single-member
log of the embedded default. The replicated pysyncobj group (issue 4) implements the
same `ReplicatedLog` interface, so nothing above this package changes when it lands."""

from .interface import JournalLost, LogUnavailable, ReplicatedLog
from .local_log import LocalLog

__all__ = ["JournalLost", "LocalLog", "LogUnavailable", "ReplicatedLog"]
