"""The canonical segment: round trips, ranged reads, and damage reported precisely."""

import dataclasses
import hashlib
import io
import os
import random
import struct

import crc32c
import msgpack
import pytest

from tiering.segment_format import (
    ENTRY_BLOCK_BYTES,
    FOOTER,
    HEADER,
    SegmentCorrupt,
    SegmentReader,
    SegmentWriter,
)


def cid(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


CHUNKS = {
    "empty": b"",
    "tiny": b"7 bytes",
    "random": random.Random(1).randbytes(4 << 20),
    "text": b"".join(
        b"bucket=photos key=2024/%06d.jpg size=%d\n" % (i, 37 * i) for i in range(50_000)
    ),
}


def write_segment(path, lsn_lo=100, lsn_hi=199, chunks=CHUNKS.values(), entries=None):
    if entries is None:
        entries = [(lsn, b"entry %d" % lsn) for lsn in range(lsn_lo, lsn_hi + 1)]
    with open(path, "wb") as f:
        writer = SegmentWriter(f, lsn_lo, lsn_hi)
        for lsn, entry in entries[: len(entries) // 2]:
            writer.add_entry(lsn, entry)
        for data in chunks:
            writer.add_chunk(cid(data), data)
        for lsn, entry in entries[len(entries) // 2 :]:
            writer.add_entry(lsn, entry)
        return writer.finish()


class CountingReadAt:
    def __init__(self, path):
        self.data = open(path, "rb").read()
        self.reads = []

    def __call__(self, offset, n):
        self.reads.append((offset, n))
        return self.data[offset : offset + n]


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def segment(tmp_path):
    path = tmp_path / "seg"
    return path, write_segment(path)


def test_round_trip(segment):
    path, info = segment
    assert info.size == os.path.getsize(path)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (info.lsn_lo, info.lsn_hi, info.chunk_count, info.entry_count) == (100, 199, 4, 100)
    assert info.chunk_bytes == sum(map(len, CHUNKS.values()))
    with SegmentReader.open_file(path) as reader:
        assert reader.info == dataclasses.replace(info, sha256=None)
        assert sorted(reader.chunk_ids()) == sorted(map(cid, CHUNKS.values()))
        for data in CHUNKS.values():
            assert reader.has_chunk(cid(data))
            assert reader.read_chunk(cid(data)) == data
        assert list(reader.entries()) == [(lsn, b"entry %d" % lsn) for lsn in range(100, 200)]
        assert not reader.has_chunk(cid(b"absent"))
        with pytest.raises(KeyError):
            reader.read_chunk(cid(b"absent"))


def test_compression_and_duplicates(tmp_path):
    buf = io.BytesIO()
    writer = SegmentWriter(buf, 1, 1)
    text = CHUNKS["text"]
    assert writer.add_chunk(cid(text), text) is True
    assert writer.add_chunk(cid(text), text) is False
    info = writer.finish()
    assert info.chunk_count == 1
    assert info.size < len(text) // 4


def test_many_entry_blocks(tmp_path):
    path = tmp_path / "seg"
    big = [(lsn, os.urandom(1000)) for lsn in range(1, 3 * ENTRY_BLOCK_BYTES // 1000)]
    write_segment(path, 1, 10_000, chunks=[], entries=big)
    read_at = CountingReadAt(path)
    reader = SegmentReader(read_at, os.path.getsize(path))
    read_at.reads.clear()
    assert list(reader.entries()) == big
    assert read_at.reads == [(b.offset, b.stored_length) for b in reader.entry_blocks()]
    assert len(read_at.reads) >= 3
    assert reader.verify().ok


def test_single_chunk_read_touches_only_footer_index_and_frame(segment):
    path, info = segment
    read_at = CountingReadAt(path)
    reader = SegmentReader(read_at, info.size)
    assert len(read_at.reads) == 2  # footer, index
    assert read_at.reads[0] == (info.size - FOOTER.size, FOOTER.size)
    read_at.reads.clear()
    tiny = cid(CHUNKS["tiny"])
    assert reader.read_chunk(tiny) == CHUNKS["tiny"]
    assert read_at.reads == [reader.chunk_span(tiny)]
    assert reader.chunk_span(tiny)[1] < 100


def test_corrupt_frame_affects_only_that_chunk(segment):
    path, _ = segment
    random_id = cid(CHUNKS["random"])
    with SegmentReader.open_file(path) as reader:
        offset, length = reader.chunk_span(random_id)
    flip_byte(path, offset + length // 2)
    with SegmentReader.open_file(path) as reader:
        with pytest.raises(SegmentCorrupt, match=f"chunk {random_id.hex()}.*CRC32C mismatch"):
            reader.read_chunk(random_id)
        for name in ("empty", "tiny", "text"):
            assert reader.read_chunk(cid(CHUNKS[name])) == CHUNKS[name]
        assert len(list(reader.entries())) == 100
        report = reader.verify()
    assert not report.ok
    assert report.bad_chunks == [random_id]
    assert report.bad_entry_blocks == []
    assert len(report.problems) == 1
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupt_entry_block_and_header_reported(segment):
    path, _ = segment
    with SegmentReader.open_file(path) as reader:
        block = reader.entry_blocks()[0]
    flip_byte(path, block.offset + 1)
    flip_byte(path, 3)
    with SegmentReader.open_file(path) as reader:
        with pytest.raises(SegmentCorrupt, match="entry block 0"):
            list(reader.entries())
        report = reader.verify()
    assert report.bad_entry_blocks == [0]
    assert any("header" in problem for problem in report.problems)


def test_verify_clean(segment):
    path, info = segment
    with SegmentReader.open_file(path) as reader:
        report = reader.verify()
    assert report.ok, report.problems
    assert report.sha256 == info.sha256


@pytest.mark.parametrize("where", ["index", "footer"])
def test_corrupt_index_or_footer(segment, where):
    path, info = segment
    index_offset = int.from_bytes(path.read_bytes()[-FOOTER.size : -FOOTER.size + 8], "little")
    flip_byte(path, index_offset + 5 if where == "index" else info.size - 20)
    with pytest.raises(SegmentCorrupt, match=f"{where} checksum mismatch"):
        SegmentReader.open_file(path)


def test_malformed_index_with_good_checksum(segment):
    path, info = segment
    data = path.read_bytes()
    index_offset = int.from_bytes(data[-FOOTER.size : -FOOTER.size + 8], "little")
    chunks = [[b"x"]]  # a chunk row with no offset, lengths or CRC
    index = msgpack.packb({"version": 1, "lsn_lo": 1, "lsn_hi": 2, "chunks": chunks, "entries": []})
    head = struct.pack("<QQI", index_offset, len(index), crc32c.crc32c(index))
    footer = head + struct.pack("<I", crc32c.crc32c(head)) + b"TIDEIDX\0"
    path.write_bytes(data[:index_offset] + index + footer)
    with pytest.raises(SegmentCorrupt, match="index is malformed"):
        SegmentReader.open_file(path)


@pytest.mark.parametrize("keep", [0, 10, HEADER.size + FOOTER.size, 5000, -1])
def test_truncated(segment, keep):
    path, info = segment
    with open(path, "r+b") as f:
        f.truncate(keep if keep >= 0 else info.size - 1)
    with pytest.raises(SegmentCorrupt, match="truncated"):
        SegmentReader.open_file(path)


def test_short_read_at_is_corruption(segment):
    path, info = segment
    data = path.read_bytes()
    with pytest.raises(SegmentCorrupt, match="short read"):
        SegmentReader(lambda offset, n: data[offset : offset + n], info.size + 100)


def test_writer_rejects_bad_input():
    writer = SegmentWriter(io.BytesIO(), 10, 20)
    with pytest.raises(ValueError, match="not the SHA-256"):
        writer.add_chunk(cid(b"other"), b"data")
    with pytest.raises(ValueError, match="not the SHA-256"):
        writer.add_chunk(b"short", b"data")
    with pytest.raises(ValueError, match="outside"):
        writer.add_entry(9, b"x")
    writer.add_entry(12, b"x")
    with pytest.raises(ValueError, match="out of order"):
        writer.add_entry(12, b"y")
    with pytest.raises(ValueError, match="outside"):
        writer.add_entry(21, b"x")
    writer.finish()
    with pytest.raises(ValueError, match="finished"):
        writer.add_entry(13, b"x")
    with pytest.raises(ValueError, match="LSN range"):
        SegmentWriter(io.BytesIO(), 5, 4)


def test_writer_streams_chunks(tmp_path):
    """Chunk bytes reach the file when added, not at finish."""
    buf = io.BytesIO()
    writer = SegmentWriter(buf, 1, 1)
    data = CHUNKS["random"]
    writer.add_chunk(cid(data), data)
    assert buf.tell() > len(data)
    writer.finish()


def test_empty_segment(tmp_path):
    buf = io.BytesIO()
    info = SegmentWriter(buf, 7, 7).finish()
    reader = SegmentReader(lambda offset, n: buf.getvalue()[offset : offset + n], info.size)
    assert reader.chunk_ids() == [] and list(reader.entries()) == []
    assert reader.verify().ok
