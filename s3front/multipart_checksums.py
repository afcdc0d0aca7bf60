"""The checksum of a multipart object, from its parts' checksums: what S3 returns on
CompleteMultipartUpload and, with `x-amz-checksum-mode: ENABLED`, on HEAD and GET.

Two kinds (`x-amz-checksum-type` on CreateMultipartUpload):
- COMPOSITE (SHA1, SHA256, CRC32, CRC32C): the algorithm over the concatenated binary
  part checksums, suffixed `-<part count>`. Clients do not check it against the body.
- FULL_OBJECT (CRC32, CRC32C, CRC64NVME): the CRC of the whole object, which clients
  do check. It is combined from the part CRCs and sizes (the CRC of A||B from crc(A),
  crc(B) and len(B), zlib's crc32_combine in GF(2)), so no byte is read again.
"""

from __future__ import annotations

import base64

from .checksums import new_checksum
from .errors import S3Error

FULL_OBJECT_ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME")
COMPOSITE_ALGORITHMS = ("CRC32", "CRC32C", "SHA1", "SHA256")

# reflected polynomials and widths; all three start from all ones and end with an xor
# of all ones, which the combination below assumes (as zlib's does)
_CRC = {"CRC32": (0xEDB88320, 32), "CRC32C": (0x82F63B78, 32), "CRC64NVME": (0x9A6C9329AC4BC9B5, 64)}


def checksum_type(algorithm: str | None, requested: str | None) -> str | None:
    """The upload's checksum type (the default S3 gives when none is asked for), or
    InvalidRequest for a combination S3 refuses."""
    if not algorithm:
        if requested:
            raise S3Error.of("InvalidRequest", "The x-amz-checksum-type header can only be used "
                             "with the x-amz-checksum-algorithm header.")
        return None
    kind = (requested or ("FULL_OBJECT" if algorithm == "CRC64NVME" else "COMPOSITE")).upper()
    allowed = FULL_OBJECT_ALGORITHMS if kind == "FULL_OBJECT" else (
        COMPOSITE_ALGORITHMS if kind == "COMPOSITE" else ())
    if algorithm not in allowed:
        raise S3Error.of("InvalidRequest", f"The {algorithm} checksum algorithm is not supported "
                         f"with the {kind} checksum type.")
    return kind


def composite(algorithm: str, part_values: list[str]) -> str:
    h = new_checksum(algorithm)
    for value in part_values:
        h.update(base64.b64decode(value))
    return f"{base64.b64encode(h.digest()).decode()}-{len(part_values)}"


def full_object(algorithm: str, parts: list[tuple[str, int]]) -> str:
    """The CRC of the concatenated parts, from [(part CRC in base64, part size)]."""
    poly, width = _CRC[algorithm]
    crc = None
    for value, size in parts:
        part = int.from_bytes(base64.b64decode(value), "big")
        # with the register's start equal to its final xor (all ones, for all three):
        # crc(A || B) = crc(A) advanced over len(B) zero bytes, xor crc(B)
        crc = part if crc is None else _zeros(crc, size, poly, width) ^ part
    return base64.b64encode(crc.to_bytes(width // 8, "big")).decode()


# ---- GF(2) arithmetic -------------------------------------------------------------------
# Appending n zero bytes to a message maps its (raw, unconditioned) CRC through a linear
# operator: a width x width bit matrix, the 8n-th power of the one-zero-bit operator.
# The operators for 2^k zero bytes are squared once and kept.

_operators: dict[tuple[int, int], list] = {}


def _times(matrix: list, vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _square(matrix: list) -> list:
    return [_times(matrix, row) for row in matrix]


def _byte_powers(poly: int, width: int) -> list:
    """Operators for 1, 2, 4, ... zero bytes (grown on demand)."""
    key = (poly, width)
    ops = _operators.get(key)
    if ops is None:
        one_bit = [poly] + [1 << n for n in range(width - 1)]
        m = one_bit
        for _ in range(3):  # 8 zero bits
            m = _square(m)
        ops = _operators[key] = [m]
    return ops


def _zeros(crc: int, n: int, poly: int, width: int) -> int:
    ops = _byte_powers(poly, width)
    k = 0
    while n:
        if k == len(ops):
            ops.append(_square(ops[-1]))
        if n & 1:
            crc = _times(ops[k], crc)
        n >>= 1
        k += 1
    return crc
