"""The canonical cold-tier segment: one file per LSN range [lsn_lo, lsn_hi].

A segment holds the committed log entries of its range plus the chunk data those
entries introduced, so that cold storage alone can rebuild state (DESIGN.md, "Cold tier
and the invariant"). It is built once, streamed (chunk data is compressed and written
as it is added), and then only read by byte ranges: a cold read of one chunk fetches
the footer, the index and that chunk's frame, never the whole segment. That is why the
index lives at the end and every frame is an independent zstd frame with its own
CRC32C. ``SegmentReader`` takes any ``read_at(offset, n)``; over erasure-coded shards
that is ``lambda off, n: code.read_range(fetch, off, n)``.

Format version 1, all integers little-endian:

    offset            size  content
    0                 32    header
    32                ...   body: zstd frames, in write order (chunk frames, entry blocks)
    index_offset      L     index: msgpack map (below)
    size - 32         32    footer

    header  8s  magic b"TIDESEG\\0"
            u16 format version (1)
            u16 flags (0)
            u64 lsn_lo
            u64 lsn_hi
            u32 CRC32C of header bytes 0..28

    footer  u64 index_offset
            u64 index_length (L)
            u32 CRC32C of the index bytes
            u32 CRC32C of footer bytes 0..20
            8s  magic b"TIDEIDX\\0"

    index   {"version": 1, "lsn_lo": int, "lsn_hi": int,
             "chunks":  [[chunk id (32 bytes), offset, stored length, raw length,
                          CRC32C of the stored bytes], ...]             (write order)
             "entries": [[offset, stored length, raw length, CRC32C of the stored
                          bytes, first lsn, last lsn, count], ...]}     (LSN order)

A chunk frame is one zstd frame (content size recorded) of the chunk's data; its id is
the SHA-256 of the raw data and is checked on every read. An entry block is one zstd
frame of concatenated msgpack arrays ``[lsn, entry bytes]``. Body frames do not overlap
and lie between the header and the index; a reader rejects an index that says
otherwise. The whole-file SHA-256 cannot live in the file; ``SegmentWriter.finish``
returns it for the shipper to record.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, NamedTuple

import crc32c
import msgpack
import zstandard

FORMAT_VERSION = 1
HEADER_MAGIC = b"TIDESEG\0"
FOOTER_MAGIC = b"TIDEIDX\0"
HEADER = struct.Struct("<8sHHQQI")
FOOTER = struct.Struct("<QQII8s")
CHUNK_ID_SIZE = 32
ENTRY_BLOCK_BYTES = 1 << 20  # raw entry bytes buffered before an entry block is written

ReadAt = Callable[[int, int], bytes]


class SegmentCorrupt(Exception):
    """A segment's bytes do not match its checksums or its own structure."""


@dataclass(frozen=True)
class SegmentInfo:
    """What a segment holds. ``sha256`` (hex, whole file) is known only to the writer."""

    lsn_lo: int
    lsn_hi: int
    size: int
    chunk_count: int
    entry_count: int
    chunk_bytes: int  # raw (uncompressed) chunk data
    sha256: str | None = None


class ChunkRef(NamedTuple):
    offset: int
    stored_length: int
    raw_length: int
    crc32c: int


class EntryBlock(NamedTuple):
    offset: int
    stored_length: int
    raw_length: int
    crc32c: int
    first_lsn: int
    last_lsn: int
    count: int


@dataclass
class VerifyReport:
    """Outcome of a full scan. ``sha256`` is the whole file's digest, for comparison
    with the one recorded when the segment was shipped."""

    sha256: str
    problems: list[str] = field(default_factory=list)
    bad_chunks: list[bytes] = field(default_factory=list)
    bad_entry_blocks: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _pack_header(lsn_lo: int, lsn_hi: int) -> bytes:
    body = HEADER.pack(HEADER_MAGIC, FORMAT_VERSION, 0, lsn_lo, lsn_hi, 0)[:-4]
    return body + struct.pack("<I", crc32c.crc32c(body))


def _pack_footer(index_offset: int, index: bytes) -> bytes:
    head = struct.pack("<QQI", index_offset, len(index), crc32c.crc32c(index))
    return head + struct.pack("<I", crc32c.crc32c(head)) + FOOTER_MAGIC


class SegmentWriter:
    """Streams one segment into ``fileobj`` (anything with ``write``).

    Offsets are counted from the first byte this writer writes, so the segment may
    start anywhere in the file. Chunks are compressed and written as they are added;
    entries are buffered up to ``ENTRY_BLOCK_BYTES`` and then written as one block.
    """

    def __init__(self, fileobj: BinaryIO, lsn_lo: int, lsn_hi: int, *, level: int = 3):
        if not 0 <= lsn_lo <= lsn_hi < 1 << 64:
            raise ValueError(f"bad LSN range [{lsn_lo}, {lsn_hi}]")
        self._out = fileobj
        self._lsn_lo, self._lsn_hi = lsn_lo, lsn_hi
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._sha = hashlib.sha256()
        self._pos = 0
        self._chunks: dict[bytes, ChunkRef] = {}
        self._blocks: list[EntryBlock] = []
        self._pending: list[tuple[int, bytes]] = []
        self._pending_bytes = 0
        self._last_lsn = lsn_lo - 1
        self._entry_count = 0
        self._finished = False
        self._write(_pack_header(lsn_lo, lsn_hi))

    def add_entry(self, lsn: int, entry: bytes) -> None:
        """Add a log entry; LSNs must increase and lie within the segment's range."""
        self._check_open()
        if not self._last_lsn < lsn <= self._lsn_hi:
            raise ValueError(
                f"entry LSN {lsn} out of order or outside [{self._lsn_lo}, {self._lsn_hi}]"
                f" (last added: {self._last_lsn})"
            )
        self._last_lsn = lsn
        self._pending.append((lsn, bytes(entry)))
        self._pending_bytes += len(entry)
        self._entry_count += 1
        if self._pending_bytes >= ENTRY_BLOCK_BYTES:
            self._flush_entries()

    def add_chunk(self, chunk_id: bytes, data: bytes, *, verified: bool = False) -> bool:
        """Compress and write one chunk. Returns False if it was already stored.
        `verified`: the caller has just checked the data against its id (skip the
        second SHA-256 pass)."""
        self._check_open()
        if len(chunk_id) != CHUNK_ID_SIZE or (
                not verified and hashlib.sha256(data).digest() != chunk_id):
            raise ValueError(f"chunk id {bytes(chunk_id).hex()} is not the SHA-256 of its data")
        if chunk_id in self._chunks:
            return False
        frame = self._compressor.compress(data)
        ref = ChunkRef(self._pos, len(frame), len(data), crc32c.crc32c(frame))
        self._chunks[bytes(chunk_id)] = ref
        self._write(frame)
        return True

    def finish(self) -> SegmentInfo:
        """Write the last entry block, the index and the footer."""
        self._check_open()
        self._flush_entries()
        index_offset = self._pos
        index = msgpack.packb(
            {
                "version": FORMAT_VERSION,
                "lsn_lo": self._lsn_lo,
                "lsn_hi": self._lsn_hi,
                "chunks": [[cid, *ref] for cid, ref in self._chunks.items()],
                "entries": [list(block) for block in self._blocks],
            }
        )
        self._write(index)
        self._write(_pack_footer(index_offset, index))
        self._finished = True
        return SegmentInfo(
            lsn_lo=self._lsn_lo,
            lsn_hi=self._lsn_hi,
            size=self._pos,
            chunk_count=len(self._chunks),
            entry_count=self._entry_count,
            chunk_bytes=sum(ref.raw_length for ref in self._chunks.values()),
            sha256=self._sha.hexdigest(),
        )

    def _flush_entries(self) -> None:
        if not self._pending:
            return
        packer = msgpack.Packer()
        raw = b"".join(packer.pack([lsn, entry]) for lsn, entry in self._pending)
        frame = self._compressor.compress(raw)
        first, last = self._pending[0][0], self._pending[-1][0]
        count = len(self._pending)
        crc = crc32c.crc32c(frame)
        self._blocks.append(EntryBlock(self._pos, len(frame), len(raw), crc, first, last, count))
        self._write(frame)
        self._pending, self._pending_bytes = [], 0

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._out.write(view)
            view = view[len(view) if written is None else written:]
        self._sha.update(data)
        self._pos += len(data)

    def _check_open(self) -> None:
        if self._finished:
            raise ValueError("segment already finished")


class SegmentReader:
    """Random access to a finished segment through ``read_at(offset, n)``.

    Opening costs two reads (footer, index); ``read_chunk`` one more.
    """

    def __init__(self, read_at: ReadAt, size: int):
        self._read_at = read_at
        self._size = size
        self._closer: Callable[[], None] | None = None
        self._index_offset, index = self._read_index()
        self.lsn_lo, self.lsn_hi, self._chunks, self._blocks = _parse_index(index)
        self._check_frames()

    @classmethod
    def open_file(cls, path: str | os.PathLike) -> SegmentReader:
        """A reader over a local file; close it (or use ``with``) to release the fd."""
        fd = os.open(path, os.O_RDONLY)
        try:
            reader = cls(lambda offset, n: os.pread(fd, n, offset), os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise
        reader._closer = lambda: os.close(fd)
        return reader

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def info(self) -> SegmentInfo:
        return SegmentInfo(
            lsn_lo=self.lsn_lo,
            lsn_hi=self.lsn_hi,
            size=self._size,
            chunk_count=len(self._chunks),
            entry_count=sum(block.count for block in self._blocks),
            chunk_bytes=sum(ref.raw_length for ref in self._chunks.values()),
        )

    def chunk_ids(self) -> list[bytes]:
        return list(self._chunks)

    def has_chunk(self, chunk_id: bytes) -> bool:
        return chunk_id in self._chunks

    def chunk_span(self, chunk_id: bytes) -> tuple[int, int]:
        """(offset, length) of the chunk's stored frame: what a cold read must fetch."""
        ref = self._chunks[chunk_id]
        return ref.offset, ref.stored_length

    def entry_blocks(self) -> list[EntryBlock]:
        """The entry blocks in LSN order (their spans, for fetching entries only)."""
        return list(self._blocks)

    def read_chunk(self, chunk_id: bytes) -> bytes:
        """One ranged read; raises ``KeyError`` if absent, ``SegmentCorrupt`` if damaged."""
        ref = self._chunks[chunk_id]
        stored = self._read(ref.offset, ref.stored_length, f"chunk {chunk_id.hex()}")
        return _check_chunk(chunk_id, ref, stored)

    def entries(self) -> Iterator[tuple[int, bytes]]:
        """All entries in LSN order, one read per entry block."""
        for number, block in enumerate(self._blocks):
            stored = self._read(block.offset, block.stored_length, f"entry block {number}")
            yield from _check_entry_block(number, block, stored)

    def verify(self) -> VerifyReport:
        """Read the whole file once, in order, and check every checksum."""
        sha = hashlib.sha256()
        report = VerifyReport(sha256="")
        pos = 0
        for offset, length, part in self._parts():
            if offset > pos:
                report.problems.append(f"{offset - pos} unindexed bytes at offset {pos}")
                sha.update(self._read(pos, offset - pos, "unindexed bytes"))
            data = self._read(offset, length, "segment")
            sha.update(data)
            self._check_part(part, data, report)
            pos = offset + length
        report.sha256 = sha.hexdigest()
        return report

    def _frames(self) -> list[tuple[int, int, bytes | int]]:
        """Body frames in file order: (offset, length, chunk id or entry block number)."""
        frames = [(ref.offset, ref.stored_length, cid) for cid, ref in self._chunks.items()]
        frames += [(block.offset, block.stored_length, n) for n, block in enumerate(self._blocks)]
        return sorted(frames, key=lambda frame: frame[0])

    def _parts(self) -> list[tuple[int, int, str | bytes | int]]:
        """The whole file in order: header, frames, then index and footer together."""
        tail = (self._index_offset, self._size - self._index_offset, "index")
        return [(0, HEADER.size, "header"), *self._frames(), tail]

    def _check_part(self, part: str | bytes | int, data: bytes, report: VerifyReport) -> None:
        try:
            if part == "header":
                _check_header(data, self.lsn_lo, self.lsn_hi)
            elif isinstance(part, bytes):
                _check_chunk(part, self._chunks[part], data)
            elif isinstance(part, int):
                _check_entry_block(part, self._blocks[part], data)
        except SegmentCorrupt as exc:
            report.problems.append(str(exc))
            if isinstance(part, bytes):
                report.bad_chunks.append(part)
            elif isinstance(part, int):
                report.bad_entry_blocks.append(part)

    def _read(self, offset: int, n: int, what: str) -> bytes:
        data = self._read_at(offset, n)
        if len(data) != n:
            raise SegmentCorrupt(
                f"{what}: short read at offset {offset} ({len(data)} of {n} bytes); truncated?"
            )
        return bytes(data)

    def _read_index(self) -> tuple[int, bytes]:
        if self._size < HEADER.size + FOOTER.size:
            raise SegmentCorrupt(f"segment is only {self._size} bytes: truncated")
        footer = self._read(self._size - FOOTER.size, FOOTER.size, "footer")
        index_offset, index_length, index_crc, footer_crc, magic = FOOTER.unpack(footer)
        if magic != FOOTER_MAGIC:
            raise SegmentCorrupt("no footer magic at the end: truncated, or not a segment")
        if crc32c.crc32c(footer[:20]) != footer_crc:
            raise SegmentCorrupt("footer checksum mismatch")
        if index_offset < HEADER.size or index_offset + index_length + FOOTER.size != self._size:
            raise SegmentCorrupt(
                f"footer puts the index at {index_offset}+{index_length}"
                f" in a {self._size}-byte segment: truncated?"
            )
        index = self._read(index_offset, index_length, "index")
        if crc32c.crc32c(index) != index_crc:
            raise SegmentCorrupt(f"index checksum mismatch (index at {index_offset})")
        return index_offset, index

    def _check_frames(self) -> None:
        end = HEADER.size
        for offset, length, _ in self._frames():
            if offset < end or length < 0:
                raise SegmentCorrupt(f"index is malformed: frame at {offset} overlaps another")
            end = offset + length
        if end > self._index_offset:
            raise SegmentCorrupt("index is malformed: a frame runs into the index")


def _parse_index(raw: bytes) -> tuple[int, int, dict[bytes, ChunkRef], list[EntryBlock]]:
    try:
        index = msgpack.unpackb(raw)
        version = index["version"]
        if version != FORMAT_VERSION:
            raise SegmentCorrupt(
                f"segment format version {version} is not supported (this reads {FORMAT_VERSION})"
            )
        chunks = {bytes(c[0]): ChunkRef(*map(int, c[1:])) for c in index["chunks"]}
        blocks = [EntryBlock(*map(int, b)) for b in index["entries"]]
        return int(index["lsn_lo"]), int(index["lsn_hi"]), chunks, blocks
    except SegmentCorrupt:
        raise
    except Exception as exc:
        raise SegmentCorrupt(f"index is malformed: {exc!r}") from exc


def _check_header(data: bytes, lsn_lo: int, lsn_hi: int) -> None:
    magic, version, _flags, lo, hi, crc = HEADER.unpack(data)
    if magic != HEADER_MAGIC or crc32c.crc32c(data[:-4]) != crc:
        raise SegmentCorrupt("header is damaged (magic or checksum mismatch)")
    if version != FORMAT_VERSION or (lo, hi) != (lsn_lo, lsn_hi):
        raise SegmentCorrupt(
            f"header (version {version}, LSNs [{lo}, {hi}]) disagrees with the index"
        )


def _decompress(what: str, stored: bytes, raw_length: int) -> bytes:
    try:
        raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_length)
    except zstandard.ZstdError as exc:
        raise SegmentCorrupt(f"{what}: zstd frame does not decompress: {exc}") from exc
    if len(raw) != raw_length:
        raise SegmentCorrupt(f"{what}: decompressed to {len(raw)} bytes, index says {raw_length}")
    return raw


def _check_crc(what: str, stored: bytes, expected: int) -> None:
    actual = crc32c.crc32c(stored)
    if actual != expected:
        raise SegmentCorrupt(
            f"{what}: CRC32C mismatch (index {expected:#010x}, read {actual:#010x})"
        )


def _check_chunk(chunk_id: bytes, ref: ChunkRef, stored: bytes) -> bytes:
    what = f"chunk {chunk_id.hex()} at offset {ref.offset}"
    _check_crc(what, stored, ref.crc32c)
    data = _decompress(what, stored, ref.raw_length)
    if hashlib.sha256(data).digest() != chunk_id:
        raise SegmentCorrupt(f"{what}: data does not hash to its chunk id")
    return data


def _check_entry_block(number: int, block: EntryBlock, stored: bytes) -> list[tuple[int, bytes]]:
    what = f"entry block {number} at offset {block.offset}"
    _check_crc(what, stored, block.crc32c)
    raw = _decompress(what, stored, block.raw_length)
    try:
        unpacker = msgpack.Unpacker()
        unpacker.feed(raw)
        entries = [(int(lsn), bytes(entry)) for lsn, entry in unpacker]
    except Exception as exc:
        raise SegmentCorrupt(f"{what}: entries do not parse: {exc!r}") from exc
    span = (entries[0][0], entries[-1][0]) if entries else None
    if len(entries) != block.count or span != (block.first_lsn, block.last_lsn):
        raise SegmentCorrupt(f"{what}: entries disagree with the index (count or LSN range)")
    return entries
