"""The write-ahead log: segmented, append-only files; LSN = byte address in the log.

A segment file is named by the LSN of its first byte (16 hex digits) and holds whole
records only: a record that does not fit in the rest of a segment starts the next one
(a record larger than a segment gets a segment of its own). Because the LSN is the
address, a chunk's location is just the LSN of its record: no separate offset map.

Durability: appends go straight to the OS (no user-space buffer), and `wait_durable`
returns once an fsync that covers the record has finished (group commit). A segment
is fsynced when it is sealed by rotation, and the directory when a segment is created.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Iterator

from .errors import WalCorruption
from .group_commit import GroupCommit
from .wal_record import (
    HEADER_SIZE,
    MAGIC,
    crc_ok,
    encode_header,
    padded,
    padding_for,
    parse_header,
)

SUFFIX = ".wal"
_MAGIC_BYTES = MAGIC.to_bytes(4, "little")
_MAGIC_OFFSET = 20  # where the magic sits inside a header


def segment_name(start: int) -> str:
    return f"{start:016x}{SUFFIX}"


@dataclass(slots=True)
class Record:
    lsn: int
    rtype: int
    payload: bytes

    @property
    def end(self) -> int:
        return self.lsn + padded(len(self.payload))


@dataclass(slots=True)
class TailCut:
    """What recovery cut from the end of the log: a torn or corrupt last record."""

    segment: str
    lsn: int
    bytes_cut: int
    reason: str


class Wal:
    def __init__(self, directory: str, segment_size: int = 64 << 20, fsync: bool = True):
        self.dir = directory
        self.segment_size = segment_size
        self.fsync_enabled = fsync
        os.makedirs(directory, exist_ok=True)
        self._lock = threading.Lock()
        self._read_fds: dict[int, int] = {}
        self._read_lock = threading.Lock()
        self.segments: list[int] = sorted(
            int(n[: -len(SUFFIX)], 16) for n in os.listdir(directory) if n.endswith(SUFFIX)
        )
        # where each sealed segment ends (they never change): lets segment_of refuse an
        # LSN that falls in a deleted segment instead of naming its neighbour
        self._sealed_end: dict[int, int] = {
            s: s + os.path.getsize(self._path(s)) for s in self.segments[:-1]}
        self.commit = GroupCommit(self._sync_point)
        self._fd = -1
        self.end = 0
        self.bytes_appended = 0

    # ---- opening -------------------------------------------------------------
    def open_for_append(self, end: int) -> None:
        """Start appending at `end` (found by recovery's scan); everything before it
        is on disk already, so it counts as durable once fsynced here."""
        if not self.segments:
            self._create_segment(end)
        active = self.segments[-1]
        path = self._path(active)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.lseek(self._fd, end - active, os.SEEK_SET)
        self.end = end
        if self.fsync_enabled:
            os.fsync(self._fd)
        self.commit.mark_durable(end)

    # ---- appending -----------------------------------------------------------
    def append(self, rtype: int, parts: list) -> tuple[int, int]:
        """Append one record; returns (lsn, end). Not durable until wait_durable(end)."""
        length = sum(len(p) for p in parts)
        size = padded(length)
        with self._lock:
            active = self.segments[-1]
            if self.end > active and self.end - active + size > self.segment_size:
                self._rotate()
            lsn = self.end
            header = encode_header(lsn, rtype, parts)
            buffers = [header, *parts]
            pad = padding_for(length)
            if pad:
                buffers.append(pad)
            written = os.writev(self._fd, buffers)
            if written != size:  # short write (disk full?): never leave a torn record
                os.ftruncate(self._fd, lsn - self.segments[-1])
                os.lseek(self._fd, lsn - self.segments[-1], os.SEEK_SET)
                raise OSError(f"short WAL write: {written} of {size} bytes")
            self.end = lsn + size
            self.bytes_appended += size
            return lsn, self.end

    def wait_durable(self, end: int) -> None:
        self.commit.wait_durable(end)

    def sync(self) -> None:
        self.commit.wait_durable(self.end)

    @property
    def durable(self) -> int:
        return self.commit.durable

    def _sync_point(self):
        with self._lock:
            target = self.end
            fd = os.dup(self._fd)

        def do_sync():
            try:
                if self.fsync_enabled:
                    os.fdatasync(fd)
            finally:
                os.close(fd)

        return target, do_sync

    def _rotate(self) -> None:
        """Seal the active segment (fsync) and start a new one at the current end."""
        if self.fsync_enabled:
            os.fdatasync(self._fd)
        os.close(self._fd)
        self.commit.mark_durable(self.end)
        self._sealed_end[self.segments[-1]] = self.end
        self._create_segment(self.end)
        self._fd = os.open(self._path(self.end), os.O_WRONLY, 0o644)

    def _create_segment(self, start: int) -> None:
        fd = os.open(self._path(start), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        self._fsync_dir()
        self.segments.append(start)

    def _fsync_dir(self) -> None:
        if not self.fsync_enabled:
            return
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # ---- reading -------------------------------------------------------------
    def _path(self, start: int) -> str:
        return os.path.join(self.dir, segment_name(start))

    def segment_of(self, lsn: int) -> int:
        """Start LSN of the segment holding lsn."""
        segs = self.segments
        lo, hi = 0, len(segs) - 1
        if hi < 0 or lsn < segs[0]:
            raise KeyError(f"LSN {lsn} is before the first segment")
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if segs[mid] <= lsn:
                lo = mid
            else:
                hi = mid - 1
        end = self._sealed_end.get(segs[lo])
        if end is not None and lsn >= end:
            raise KeyError(f"LSN {lsn} is in a deleted segment")
        return segs[lo]

    def _read_fd(self, start: int) -> int:
        fd = self._read_fds.get(start)
        if fd is None:
            with self._read_lock:
                fd = self._read_fds.get(start)
                if fd is None:
                    fd = os.open(self._path(start), os.O_RDONLY)
                    self._read_fds[start] = fd
        return fd

    def pread(self, lsn: int, n: int) -> bytes:
        """n bytes at log address lsn (within one segment)."""
        start = self.segment_of(lsn)
        data = os.pread(self._read_fd(start), n, lsn - start)
        if len(data) != n:
            raise WalCorruption(segment_name(start), lsn, f"short read ({len(data)} of {n})")
        return data

    def read_record(self, lsn: int) -> Record:
        """The record at lsn, with its header and CRC verified."""
        start = self.segment_of(lsn)
        head = os.pread(self._read_fd(start), HEADER_SIZE, lsn - start)
        h = parse_header(head, lsn)
        if h is None:
            raise WalCorruption(segment_name(start), lsn, "bad record header")
        payload = self.pread(lsn + HEADER_SIZE, h.length) if h.length else b""
        if not crc_ok(head, payload, h.crc):
            raise WalCorruption(segment_name(start), lsn, "CRC mismatch")
        return Record(lsn, h.rtype, payload)

    def sealed_size(self, start: int) -> int | None:
        """Bytes of a sealed segment (known since it was sealed or found at open: no
        stat); None for the active segment or one not on disk."""
        end = self._sealed_end.get(start)
        return None if end is None else end - start

    def segment_size_on_disk(self, start: int) -> int:
        try:
            return os.path.getsize(self._path(start))
        except FileNotFoundError:
            return 0

    # ---- scanning (recovery, inspection) ----------------------------------------
    def scan(self, from_lsn: int, tail_cuts: list | None = None) -> Iterator[Record]:
        """Every record from from_lsn to the end of the log, verified.

        A bad record in the last segment with no valid record after it is a torn
        tail: it is cut (the file is truncated) when tail_cuts is a list, and the cut
        is recorded there; with tail_cuts None the scan just stops (read-only). A bad
        record anywhere else raises WalCorruption."""
        segs = [s for i, s in enumerate(self.segments)
                if i + 1 == len(self.segments) or self.segments[i + 1] > from_lsn]
        expected = from_lsn if segs else 0
        for idx, start in enumerate(segs):
            last = idx == len(segs) - 1
            if idx > 0 and start != expected:
                raise WalCorruption(segment_name(start), expected,
                                    f"gap in the log: segment starts at {start}, previous ended at {expected}")
            pos = max(expected, start)
            path = self._path(start)
            size = os.path.getsize(path)
            with open(path, "rb", buffering=1 << 20) as f:
                f.seek(pos - start)
                while pos - start < size:
                    head = f.read(HEADER_SIZE)
                    h = parse_header(head, pos)
                    problem = None
                    payload = b""
                    if h is None:
                        problem = "torn or invalid header" if len(head) < HEADER_SIZE else "invalid header"
                    else:
                        payload = f.read(h.length) if h.length else b""
                        if len(payload) < h.length:
                            problem = "torn record (short payload)"
                        elif not crc_ok(head, payload, h.crc):
                            problem = "CRC mismatch"
                        else:
                            skip = h.size - HEADER_SIZE - h.length
                            if skip:
                                pad = f.read(skip)
                                if len(pad) < skip:
                                    problem = "torn record (short padding)"
                    if problem is not None:
                        self._handle_bad(start, pos, size, last, problem, tail_cuts)
                        return
                    yield Record(pos, h.rtype, payload)
                    pos += h.size
            expected = pos

    def _handle_bad(self, start, pos, size, last, problem, tail_cuts) -> None:
        name = segment_name(start)
        if not last:
            raise WalCorruption(name, pos, problem + " in a sealed segment")
        later = self._find_valid_record_after(start, pos, size)
        if later is not None:
            raise WalCorruption(name, pos, f"{problem}; a valid record follows at LSN {later}")
        if tail_cuts is not None:
            tail_cuts.append(TailCut(name, pos, start + size - pos, problem))
            with open(self._path(start), "r+b") as f:
                f.truncate(pos - start)
                if self.fsync_enabled:
                    os.fsync(f.fileno())

    def _find_valid_record_after(self, start: int, pos: int, size: int) -> int | None:
        """LSN of any verifiable record after pos in this segment. Headers carry a
        magic and their own LSN, so candidates are found with a fast byte search."""
        with open(self._path(start), "rb") as f:
            f.seek(pos - start)
            buf = f.read()
        base = pos
        i = buf.find(_MAGIC_BYTES, 1)
        while i != -1:
            cand = base + i - _MAGIC_OFFSET
            if cand > pos and (cand - start) % 8 == 0:
                off = cand - base
                h = parse_header(buf[off:off + HEADER_SIZE], cand)
                if h is not None and off + HEADER_SIZE + h.length <= len(buf):
                    payload = buf[off + HEADER_SIZE: off + HEADER_SIZE + h.length]
                    if crc_ok(buf[off:off + HEADER_SIZE], payload, h.crc):
                        return cand
            i = buf.find(_MAGIC_BYTES, i + 1)
        return None

    # ---- space reclamation ---------------------------------------------------------
    def delete_segment(self, start: int) -> int:
        """Remove a sealed segment; returns the bytes freed. Never the active one."""
        if start == self.segments[-1]:
            raise ValueError("the active segment cannot be deleted")
        with self._read_lock:
            fd = self._read_fds.pop(start, None)
            if fd is not None:
                os.close(fd)
        path = self._path(start)
        size = os.path.getsize(path)
        os.unlink(path)
        self.segments.remove(start)
        self._sealed_end.pop(start, None)
        self._fsync_dir()
        return size

    def close(self, sync: bool = True) -> None:
        if self._fd >= 0:
            if sync and self.fsync_enabled:
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1
        with self._read_lock:
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
