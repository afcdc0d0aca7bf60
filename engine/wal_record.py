"""WAL record framing: one fixed header, a payload, padding to 8 bytes.

Header (little-endian, 24 bytes):
    crc32c   u32  over bytes 4..24 of the header and the payload
    length   u32  payload length (padding excluded)
    lsn      u64  the record's own LSN, which is its byte address in the log
    type     u8
    flags    u8   reserved, 0
    reserved u16  0
    magic    u32  0x54494445 ("TIDE")

The LSN is stored in the record so that a reader can tell a real record from stale
or random bytes, and so that recovery can look for valid records after a bad one
(every candidate position has exactly one LSN it may carry): that is what separates a
torn tail, which is cut, from corruption in the middle, which is reported.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import crc32c

HEADER = struct.Struct("<IIQBBHI")
HEADER_SIZE = HEADER.size  # 24
MAGIC = 0x54494445
ALIGN = 8
MAX_PAYLOAD = 64 << 20  # a record larger than this is corrupt by definition


class RecordType(enum.IntEnum):
    CHUNK = 1  # chunk data of a transaction (undoable)
    APPLY = 2  # a committed log entry applied to the catalog (redoable)
    CLR = 3  # compensation: one chunk of a loser transaction undone (redo-only)
    END = 4  # a transaction is finished (committed by APPLY, or fully rolled back)
    CHECKPOINT = 5  # fuzzy checkpoint: redo point, active transactions, dirty pages
    FILL = 6  # a chunk fetched from a peer fills a MISSING catalog row (commits its CHUNK)
    RELOCATE = 7  # compaction: a live chunk's copy takes its row (commits its CHUNK)


def padded(n: int) -> int:
    """Bytes a record with an n-byte payload occupies on disk."""
    total = HEADER_SIZE + n
    return (total + ALIGN - 1) & ~(ALIGN - 1)


def encode_header(lsn: int, rtype: int, payload_parts: list) -> bytes:
    """The header for a payload given as a list of buffers (so that big chunk data
    is never concatenated just to be framed)."""
    length = sum(len(p) for p in payload_parts)
    rest = struct.pack("<IQBBHI", length, lsn, rtype, 0, 0, MAGIC)
    crc = crc32c.crc32c(rest)
    for part in payload_parts:
        crc = crc32c.crc32c(part, crc)
    return struct.pack("<I", crc) + rest


def padding_for(payload_len: int) -> bytes:
    return b"\0" * (padded(payload_len) - HEADER_SIZE - payload_len)


@dataclass(frozen=True, slots=True)
class Header:
    crc: int
    length: int
    lsn: int
    rtype: int

    @property
    def size(self) -> int:
        return padded(self.length)


def parse_header(buf: bytes | memoryview, expected_lsn: int) -> Header | None:
    """The header at buf[0:24] if it is plausible for position expected_lsn, else None.
    Plausible: right magic, right LSN, known type, sane length. The CRC is checked by
    the caller once the payload is read."""
    if len(buf) < HEADER_SIZE:
        return None
    crc, length, lsn, rtype, flags, _res, magic = HEADER.unpack_from(buf, 0)
    if magic != MAGIC or lsn != expected_lsn or flags != 0 or length > MAX_PAYLOAD:
        return None
    if rtype not in RecordType._value2member_map_:
        return None
    return Header(crc, length, lsn, rtype)


def crc_ok(header_bytes: bytes | memoryview, payload: bytes | memoryview, crc: int) -> bool:
    return crc32c.crc32c(payload, crc32c.crc32c(header_bytes[4:HEADER_SIZE])) == crc
