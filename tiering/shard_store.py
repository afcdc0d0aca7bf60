"""Shard stores: where the k+m erasure-coded shards of sealed segments live.

The HWM may only advance past what is durable in cold storage (DESIGN.md, "Cold tier and
the invariant"), so every store makes a shard visible atomically (a reader sees all of it
or nothing), streams instead of holding shards in memory, and reports failures in three
kinds the shipper can act on: the shard is missing (`ShardNotFound`), the backend is
down and the operation may be retried later (`ShardStoreUnavailable`), or anything else
(`ShardStoreError`). Two backends: `file://DIR` (directories, one per drive) and
`s3://bucket/prefix` on any S3-compatible endpoint (AWS, MinIO, moto, Tidestore itself).

Shard names are "/"-separated relative paths whose components do not start with "."
(the same rule on both backends, so shards can move between them; dot-files are the
file store's temporary files).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import stat
import tempfile
import threading
from typing import BinaryIO, Iterator, Protocol

PART_SIZE = 8 << 20  # S3 multipart part size, and the largest read() asked of a put source


class ShardStoreError(Exception):
    """A shard store operation failed; the message names the store and the operation."""


class ShardNotFound(ShardStoreError):
    pass


class ShardStoreUnavailable(ShardStoreError):
    """The backend is down, unreachable, full or timed out: retry later."""


class InvalidShardName(ShardStoreError, ValueError):
    pass


class ShardWriter(Protocol):
    """Leaving a `with` block without commit() discards the shard."""

    def write(self, data: bytes) -> int: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> ShardWriter: ...
    def __exit__(self, *exc) -> None: ...


class ShardStore(Protocol):
    url: str

    def put(self, name: str, src: BinaryIO, size: int | None = None) -> None: ...
    def open_writer(self, name: str) -> ShardWriter: ...
    def read_range(self, name: str, offset: int, length: int) -> bytes: ...
    def size(self, name: str) -> int: ...
    def exists(self, name: str) -> bool: ...
    def modified(self, name: str) -> float: ...  # epoch seconds of the last write
    def delete(self, name: str) -> None: ...
    def list(self, prefix: str = "") -> Iterator[str]: ...
    def iter_read(self, name: str, chunk: int = 1 << 20) -> Iterator[bytes]: ...


def open_store(url: str, create: bool = True, **options) -> ShardStore:
    """`file://DIR` or `s3://bucket/prefix`; S3 options: endpoint_url, access_key,
    secret_key, region, create_bucket, timeout. `create=False`: never create the
    directory or the bucket (for tools that only read)."""
    if url.startswith("file://"):
        return FileShardStore(url[len("file://"):], create=create)
    if not create:
        options["create_bucket"] = False
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if "@" in bucket:  # never echo this URL: it holds credentials
            raise ValueError("s3:// URL must not contain credentials; pass access_key/secret_key")
        if not bucket:
            raise ValueError(f"no bucket in shard store URL {url!r}")
        return S3ShardStore(bucket, prefix, **options)
    raise ValueError(f"unsupported shard store URL {url!r} (expected file:// or s3://)")


def check_name(name: str) -> str:
    parts = name.split("/")
    if not name or any(not p or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        raise InvalidShardName(
            f"invalid shard name {name!r}: must be a relative '/'-separated path whose "
            "components are non-empty and do not start with '.'")
    return name


def _prefix_dir(prefix: str) -> str:
    """The directory part of a list prefix, held to the same rule as names."""
    base = prefix.rpartition("/")[0]
    return check_name(base) if "/" in prefix else ""


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"invalid range: offset={offset} length={length}")


def _read_up_to(src: BinaryIO, n: int) -> bytes:
    """Up to n bytes from src (fewer only at its end), never asking for more than n."""
    parts, got = [], 0
    while got < n:
        b = src.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _put(store, writer: ShardWriter, name: str, src: BinaryIO, size: int | None) -> None:
    """put() on both backends: stream src through a writer, PART_SIZE at a time."""
    with writer:
        written = 0
        while data := _read_up_to(src, PART_SIZE):
            writer.write(data)
            written += len(data)
        if size is not None and written != size:
            raise ShardStoreError(
                f"{store!r}: put {name!r}: source gave {written} bytes, expected {size}")
        writer.commit()


class _WriterBase:
    def __init__(self, where: str, name: str):
        self._where, self._name = where, name
        self._done = False

    def _check_open(self) -> None:
        if self._done:
            raise ValueError(f"{self._where}: writer for {self._name!r} is closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.abort()  # no-op after commit()


# -- file:// -------------------------------------------------------------------------------

# errnos that mean "this drive is failing or full right now", not "this request is wrong"
_UNAVAILABLE_ERRNOS = {errno.EIO, errno.ENODEV, errno.ENXIO, errno.ESTALE, errno.ETIMEDOUT,
                       errno.ENOTCONN, errno.EHOSTDOWN, errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _StoreBase:
    """What every store derives from its own `size`."""

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
            return True
        except ShardNotFound:
            return False


class FileShardStore(_StoreBase):
    """Shards as files under one directory (typically one per drive).

    A shard is written to a hidden temporary file next to its final name, fsynced,
    renamed into place and its directory fsynced: once put/commit returns it survives a
    crash, and before that no reader sees it. The directory is created if missing; if it
    disappears later (drive unmounted) operations fail with ShardStoreUnavailable instead
    of silently recreating it.
    """

    def __init__(self, directory: str, create: bool = True):
        """`create=False` for tools that only read a store: a mistyped path is then a
        missing store (ShardStoreUnavailable on use), not a new empty one."""
        self.root = os.path.abspath(directory)
        self.url = "file://" + self.root
        if create:
            os.makedirs(self.root, exist_ok=True)
        # held while creating subdirectories, so no put can return before the directory
        # entry it depends on (created by another thread) has been fsynced
        self._mkdir_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileShardStore({self.url!r})"

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *check_name(name).split("/"))

    def _error(self, op: str, name: str, exc: OSError, missing_means_not_found: bool = False):
        where = f"{self.url}: {op} {name!r}"
        if not os.path.isdir(self.root):
            return ShardStoreUnavailable(f"{where}: store directory is missing")
        if missing_means_not_found and isinstance(
                exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            return ShardNotFound(f"{where}: no such shard")
        cls = ShardStoreUnavailable if exc.errno in _UNAVAILABLE_ERRNOS else ShardStoreError
        return cls(f"{where}: {exc.strerror or exc}")

    def _makedirs(self, path: str) -> None:
        """Create path and its missing parents below the root, fsyncing each new entry."""
        if os.path.isdir(path):
            return
        if path == self.root:
            raise FileNotFoundError(errno.ENOENT, "store directory is missing")
        parent = os.path.dirname(path)
        self._makedirs(parent)
        os.mkdir(path)
        _fsync_dir(parent)

    def put(self, name: str, src: BinaryIO, size: int | None = None) -> None:
        _put(self, self.open_writer(name), name, src, size)

    def open_writer(self, name: str) -> _FileWriter:
        path = self._path(name)
        parent = os.path.dirname(path)
        try:
            with self._mkdir_lock:
                self._makedirs(parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                       dir=parent)
        except OSError as e:
            raise self._error("put", name, e) from e
        return _FileWriter(self, name, path, fd, tmp)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise IsADirectoryError(errno.EISDIR, "not a shard")
                out = bytearray()
                while len(out) < length:
                    b = os.pread(fd, length - len(out), offset + len(out))
                    if not b:
                        break
                    out += b
                return bytes(out)
            finally:
                os.close(fd)
        except OSError as e:
            raise self._error("read", name, e, missing_means_not_found=True) from e

    def size(self, name: str) -> int:
        path = self._path(name)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a shard")
            return st.st_size
        except OSError as e:
            raise self._error("size", name, e, missing_means_not_found=True) from e

    def modified(self, name: str) -> float:
        try:
            return os.stat(self._path(name)).st_mtime
        except OSError as e:
            raise self._error("stat", name, e, missing_means_not_found=True) from e

    def delete(self, name: str) -> None:
        """Leaves the emptied directories: removing them would race with puts."""
        path = self._path(name)
        try:
            os.unlink(path)
            _fsync_dir(os.path.dirname(path))
        except OSError as e:
            err = self._error("delete", name, e, missing_means_not_found=True)
            if not isinstance(err, ShardNotFound):
                raise err from e

    def list(self, prefix: str = "") -> Iterator[str]:
        """Shard names starting with prefix, sorted; temporary files are never listed."""
        base = _prefix_dir(prefix)  # walk only the subtree the prefix can match
        if not os.path.isdir(self.root):
            raise ShardStoreUnavailable(f"{self.url}: list: store directory is missing")
        names = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(self.root, *base.split("/"))):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            names.extend(rel + f for f in filenames
                         if not f.startswith(".") and (rel + f).startswith(prefix))
        return iter(sorted(names))

    def iter_read(self, name: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        path = self._path(name)
        try:
            f = open(path, "rb", buffering=0)
        except OSError as e:
            raise self._error("read", name, e, missing_means_not_found=True) from e
        return self._chunks(f, name, chunk)

    def _chunks(self, f, name: str, chunk: int) -> Iterator[bytes]:
        with f:
            try:
                while b := f.read(chunk):
                    yield b
            except OSError as e:
                raise self._error("read", name, e) from e


class _FileWriter(_WriterBase):
    """A shard being written: a hidden temporary file until commit() renames it."""

    def __init__(self, store: FileShardStore, name: str, path: str, fd: int, tmp: str):
        super().__init__(store.url, name)
        self._store, self._path, self._tmp = store, path, tmp
        self._f = open(fd, "wb")

    def write(self, data: bytes) -> int:
        self._check_open()
        try:
            return self._f.write(data)
        except OSError as e:
            self.abort()
            raise self._store._error("write", self._name, e) from e

    def commit(self) -> None:
        self._check_open()
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self._tmp, self._path)
            self._done = True
            _fsync_dir(os.path.dirname(self._path))
        except OSError as e:
            self.abort()
            raise self._store._error("commit", self._name, e) from e

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._f.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


# -- s3:// ---------------------------------------------------------------------------------

# error codes that mean "try again later" although their HTTP status is below 500
_RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "Throttling",
                    "ThrottlingException", "TooManyRequests", "ServiceUnavailable"}

_session = None  # one boto3 session: it caches service models (a client then costs ~10 ms)
_session_lock = threading.Lock()  # sessions are not thread-safe; the clients they make are


def _s3_client(**kwargs):
    global _session
    import boto3

    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", **kwargs)


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


class S3ShardStore(_StoreBase):
    """Shards as objects `prefix/name` in one bucket of any S3-compatible endpoint.

    A PutObject or CompleteMultipartUpload is atomic (the object appears only whole), so
    no temporary name is needed. Shards of PART_SIZE or more go up as a multipart upload,
    one part in memory at a time (the shipper parallelises across shards, not within
    one). Requests use path-style addressing (MinIO, moto and Tidestore need no DNS per
    bucket), carry Content-MD5, and skip the newer default CRC checksums that some
    S3-compatible servers reject. Every request has connect and read timeouts and at most
    3 attempts, so a dead endpoint surfaces as ShardStoreUnavailable within seconds. The
    boto3 client is thread-safe and shared by all threads.

    The bucket is checked (and created, with create_bucket=True) on first use, not in the
    constructor, so a node can start while cold storage is down.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None,
                 region: str = "us-east-1", create_bucket: bool = False,
                 timeout: float = 5.0):
        from botocore.config import Config

        if (access_key is None) != (secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}"
        self.endpoint_url = endpoint_url
        self._where = self.url + (f" at {endpoint_url}" if endpoint_url else "")
        self._region = region
        self._create_bucket = create_bucket
        self._secrets = [s for s in (access_key, secret_key) if s]
        self._bucket_ok = False
        self._bucket_lock = threading.Lock()
        config = Config(
            connect_timeout=timeout, read_timeout=timeout,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"}, signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required")
        self._s3 = _s3_client(
            endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, config=config)

    def __repr__(self) -> str:
        return f"S3ShardStore({self._where!r})"

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _error(self, op: str, name: str | None, exc: Exception) -> ShardStoreError:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        where = f"{self._where}: {op}" + (f" {name!r}" if name is not None else "")
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            detail = f"{code or status}: {err.get('Message') or 'no message'}"
            if code == "NoSuchBucket":
                result = ShardStoreError(f"{where}: bucket {self.bucket!r} does not exist")
            elif code in ("NoSuchKey", "NotFound", "404"):
                result = ShardNotFound(f"{where}: no such shard")
            elif status >= 500 or status == 429 or code in _RETRYABLE_CODES:
                result = ShardStoreUnavailable(f"{where}: {detail}")
            else:
                result = ShardStoreError(f"{where}: {detail}")
        elif isinstance(exc, (ConnectionError, HTTPClientError)):
            result = ShardStoreUnavailable(f"{where}: endpoint unreachable or timed out: {exc}")
        else:
            result = ShardStoreError(f"{where}: {exc}")
        for secret in self._secrets:
            result.args = (result.args[0].replace(secret, "***"),)
        return result

    @contextlib.contextmanager
    def _translated(self, op: str, name: str | None):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as e:
            raise self._error(op, name, e) from e

    def _call(self, op: str, name: str | None, method: str, **kwargs):
        """One S3 request on the bucket, after the bucket check, errors translated."""
        self._ensure_bucket()
        with self._translated(op, name):
            return getattr(self._s3, method)(Bucket=self.bucket, **kwargs)

    def _ensure_bucket(self) -> None:
        if self._bucket_ok:
            return
        with self._bucket_lock:
            if self._bucket_ok:
                return
            if not self._bucket_exists():
                if not self._create_bucket:
                    raise ShardStoreError(
                        f"{self._where}: bucket {self.bucket!r} does not exist "
                        "(create it, or open the store with create_bucket=True)")
                self._make_bucket()
            self._bucket_ok = True

    def _bucket_exists(self) -> bool:
        from botocore.exceptions import ClientError

        with self._translated("check bucket", None):
            try:
                self._s3.head_bucket(Bucket=self.bucket)
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                    return False
                raise

    def _make_bucket(self) -> None:
        from botocore.exceptions import ClientError

        kwargs = {}
        if self._region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        with self._translated("create bucket", None):
            try:
                self._s3.create_bucket(Bucket=self.bucket, **kwargs)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

    def put(self, name: str, src: BinaryIO, size: int | None = None) -> None:
        _put(self, self.open_writer(name), name, src, size)

    def open_writer(self, name: str) -> _S3Writer:
        return _S3Writer(self, name, self._key(name))

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        from botocore.exceptions import ClientError

        _check_range(offset, length)
        key = self._key(name)
        if length == 0:
            self.size(name)  # still report a missing shard
            return b""
        self._ensure_bucket()
        with self._translated("read", name):
            try:
                r = self._s3.get_object(Bucket=self.bucket, Key=key,
                                        Range=f"bytes={offset}-{offset + length - 1}")
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # offset at or past the end
                raise
            with r["Body"] as body:
                data = body.read()
        if "ContentRange" not in r:  # a server that ignores Range sent the whole object
            data = data[offset:offset + length]
        return data

    def size(self, name: str) -> int:
        return self._call("size", name, "head_object", Key=self._key(name))["ContentLength"]

    def modified(self, name: str) -> float:
        return self._call("stat", name, "head_object", Key=self._key(name))["LastModified"].timestamp()

    def delete(self, name: str) -> None:
        self._call("delete", name, "delete_object", Key=self._key(name))

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names in S3 key order (UTF-8 byte order, the same as str order), page by page."""
        _prefix_dir(prefix)
        self._ensure_bucket()
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + prefix)
        return self._names(pages, base, prefix)

    def _names(self, pages, base: str, prefix: str) -> Iterator[str]:
        with self._translated("list", prefix):
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield obj["Key"][len(base):]

    def iter_read(self, name: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        body = self._call("read", name, "get_object", Key=self._key(name))["Body"]
        return self._chunks(body, name, chunk)

    def _chunks(self, body, name: str, chunk: int) -> Iterator[bytes]:
        with body, self._translated("read", name):
            yield from body.iter_chunks(chunk)


class _S3Writer(_WriterBase):
    """A shard being written: one PutObject at commit() if it stays under PART_SIZE,
    otherwise a multipart upload (invisible until completed) fed a part at a time."""

    def __init__(self, store: S3ShardStore, name: str, key: str):
        super().__init__(store._where, name)
        self._store, self._key = store, key
        self._buf = bytearray()
        self._upload: str | None = None
        self._parts: list = []

    def _send_part(self, data: bytes) -> None:
        s = self._store
        if self._upload is None:
            self._upload = s._call("put", self._name, "create_multipart_upload",
                                   Key=self._key)["UploadId"]
        n = len(self._parts) + 1
        r = s._call("put", self._name, "upload_part", Key=self._key, UploadId=self._upload,
                    PartNumber=n, Body=data, ContentMD5=_md5(data))
        self._parts.append({"PartNumber": n, "ETag": r["ETag"]})

    def write(self, data: bytes) -> int:
        self._check_open()
        try:
            if not self._buf and len(data) == PART_SIZE:  # put()'s case: no copy
                self._send_part(bytes(data))
                return len(data)
            self._buf += data
            while len(self._buf) >= PART_SIZE:
                self._send_part(bytes(memoryview(self._buf)[:PART_SIZE]))
                del self._buf[:PART_SIZE]
        except BaseException:
            self.abort()
            raise
        return len(data)

    def commit(self) -> None:
        self._check_open()
        s, last = self._store, bytes(self._buf)
        try:
            if self._upload is None:
                s._call("put", self._name, "put_object", Key=self._key, Body=last,
                        ContentMD5=_md5(last))
            else:
                if last:
                    self._send_part(last)
                s._call("put", self._name, "complete_multipart_upload", Key=self._key,
                        UploadId=self._upload, MultipartUpload={"Parts": self._parts})
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._buf = bytearray()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buf = bytearray()
        if self._upload is not None:
            with contextlib.suppress(Exception):  # best effort; a lifecycle rule reaps leftovers
                self._store._s3.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._key, UploadId=self._upload)
