"""S3 flexible checksums and Content-MD5, computed in one streaming pass.

Why: clients send integrity values with uploads (``Content-MD5``, one
``x-amz-checksum-<alg>`` header or trailer) and expect them checked and
echoed back; the server also needs the MD5 for the ETag and, for signed
payloads, the SHA-256. :class:`MultiHasher` feeds every algorithm a request
needs from a single pass over the body, so bytes are read once.

Values are base64 of the big-endian digest, as S3 sends them. CRC64NVME is
supported only when ``awscrt`` is installed (the same dependency botocore
uses for it); otherwise asking for it is an ``InvalidArgument``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from typing import Iterable, Mapping

import crc32c as _crc32c

from .errors import S3Error

try:  # optional: the AWS common runtime carries the only maintained CRC64NVME
    from awscrt import checksums as _crt_checksums  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _crt_checksums = None

__all__ = [
    "ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "checksum_header",
    "normalize_algorithm",
    "new_checksum",
    "checksum_b64",
    "parse_content_md5",
    "checksum_headers",
    "MultiHasher",
]

ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
_DIGEST_SIZE = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8, "SHA1": 20, "SHA256": 32}


class _Crc32:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return (self.value & 0xFFFFFFFF).to_bytes(4, "big")


class _Crc32c(_Crc32):
    __slots__ = ()

    def update(self, data) -> None:
        self.value = _crc32c.crc32c(data, self.value)


class _Crc64Nvme:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data) -> None:
        self.value = _crt_checksums.crc64nvme(data, self.value)

    def digest(self) -> bytes:
        return (self.value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


_FACTORIES = {
    "CRC32": _Crc32,
    "CRC32C": _Crc32c,
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
}
if _crt_checksums is not None and hasattr(_crt_checksums, "crc64nvme"):
    _FACTORIES["CRC64NVME"] = _Crc64Nvme

SUPPORTED_ALGORITHMS = tuple(a for a in ALGORITHMS if a in _FACTORIES)


def checksum_header(algorithm: str) -> str:
    """``CRC32C`` -> ``x-amz-checksum-crc32c``."""
    return "x-amz-checksum-" + algorithm.lower()


def normalize_algorithm(name: str) -> str:
    """Upper-case and validate an algorithm name (``x-amz-checksum-algorithm``)."""
    alg = name.strip().upper()
    if alg not in ALGORITHMS:
        raise S3Error.of(
            "InvalidArgument",
            "Checksum algorithm provided is unsupported. Please try again with any of "
            "the valid types: [" + ", ".join(SUPPORTED_ALGORITHMS) + "]",
            argument_name="x-amz-checksum-algorithm",
            argument_value=name,
        )
    if alg not in _FACTORIES:
        raise S3Error.of(
            "InvalidArgument",
            f"Checksum algorithm {alg} is not supported by this server",
            argument_name="x-amz-checksum-algorithm",
            argument_value=name,
        )
    return alg


def new_checksum(algorithm: str):
    """A fresh hasher (``update``/``digest``) for a normalized algorithm name."""
    return _FACTORIES[normalize_algorithm(algorithm)]()


def checksum_b64(algorithm: str, data: bytes) -> str:
    """The S3 checksum value of ``data`` in one call."""
    h = new_checksum(algorithm)
    h.update(data)
    return base64.b64encode(h.digest()).decode("ascii")


def _b64decode(value: str) -> bytes | None:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def parse_content_md5(value: str) -> bytes:
    """Decode a ``Content-MD5`` header; InvalidDigest unless 16 bytes of base64."""
    digest = _b64decode(value)
    if digest is None or len(digest) != 16:
        raise S3Error.of("InvalidDigest", **{"Content-MD5": value})
    return digest


def checksum_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-amz-checksum-<alg>`` values a request carries, by algorithm.

    Validates each value's base64 and length (InvalidRequest otherwise, as S3
    does) and refuses more than one (S3 allows a single checksum type).
    ``x-amz-checksum-type`` / ``-algorithm`` are not values and are skipped.
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower()
        if not lname.startswith("x-amz-checksum-") or lname in (
            "x-amz-checksum-type",
            "x-amz-checksum-algorithm",
            "x-amz-checksum-mode",
        ):
            continue
        alg = normalize_algorithm(lname[len("x-amz-checksum-") :])
        raw = _b64decode(value)
        if raw is None or len(raw) != _DIGEST_SIZE[alg]:
            raise S3Error.of("InvalidRequest", f"Value for {lname} header is invalid.")
        found[alg] = value.strip()
    if len(found) > 1:
        raise S3Error.of(
            "InvalidRequest",
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
        )
    return found


class MultiHasher:
    """Feed MD5 (for the ETag), optionally SHA-256 (for the signed payload
    hash) and any S3 checksum algorithms from one pass over the data."""

    def __init__(
        self, algorithms: Iterable[str] = (), *, md5: bool = True, sha256: bool = False
    ) -> None:
        self._md5 = hashlib.md5() if md5 else None
        algs = {normalize_algorithm(a) for a in algorithms}
        if sha256:
            algs.add("SHA256")
        self._hashers = {alg: _FACTORIES[alg]() for alg in sorted(algs)}
        self._updates = [h.update for h in self._hashers.values()]
        if self._md5 is not None:
            self._updates.append(self._md5.update)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        for update in self._updates:
            update(data)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._hashers)

    def md5_digest(self) -> bytes:
        if self._md5 is None:
            raise ValueError("MD5 was not requested")
        return self._md5.digest()

    def md5_hex(self) -> str:
        return self.md5_digest().hex()

    def sha256_hex(self) -> str:
        return self._hashers["SHA256"].digest().hex()

    def digest(self, algorithm: str) -> bytes:
        return self._hashers[algorithm.upper()].digest()

    def checksums(self) -> dict[str, str]:
        """Base64 value for every S3 algorithm fed (SHA256 included if requested)."""
        return {
            alg: base64.b64encode(h.digest()).decode("ascii") for alg, h in self._hashers.items()
        }

    def verify_content_md5(self, header_value: str) -> None:
        """Raise InvalidDigest if malformed, BadDigest if it does not match."""
        expected = parse_content_md5(header_value)
        if not hmac.compare_digest(expected, self.md5_digest()):
            raise S3Error.of(
                "BadDigest",
                ExpectedDigest=expected.hex(),
                CalculatedDigest=base64.b64encode(self.md5_digest()).decode("ascii"),
            )

    def verify(self, expected: Mapping[str, str]) -> None:
        """Check client-sent checksum values (algorithm -> base64); BadDigest on mismatch."""
        for alg, value in expected.items():
            alg = alg.upper()
            if alg not in self._hashers:
                raise ValueError(f"{alg} was not fed by this MultiHasher")
            actual = base64.b64encode(self._hashers[alg].digest()).decode("ascii")
            if not hmac.compare_digest(actual.encode(), value.strip().encode()):
                raise S3Error.of(
                    "BadDigest", f"The {alg} you specified did not match the calculated checksum."
                )
