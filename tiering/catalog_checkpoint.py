"""Cold catalog checkpoints: the engine's catalog as of a log LSN, shipped next to the
segments, so that a store can be rebuilt from cold storage by loading the latest
checkpoint and replaying only the segments after it (instead of every segment since
LSN 1).

A checkpoint is a compacted copy of the LMDB catalog taken inside one read
transaction (so it is exactly the state after its `applied_lsn`), zstd-compressed and
erasure-coded like a segment, under `checkpoints/<lsn>/shard-<i>`. It becomes usable
once the HWM reaches its LSN: the shipper records it in the first `SegmentShipped`
whose range ends at or after that LSN (`locations["checkpoint"]`). The chunk rows in
it carry this node's WAL locations, which mean nothing elsewhere: a rebuild treats
every chunk as cold (its `intro_lsn` says which segment holds it).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import msgpack
import zstandard

from .cold_reader import erasure_code, shard_fetch


FORMAT = 1


def snapshot(engine, work_dir: str, level: int = 3) -> tuple[str, int, int, str]:
    """Copy and compress the catalog; returns (path of the compressed file, its log
    LSN, the raw size, the compressed file's SHA-256)."""
    env = engine.catalog.env
    meta = engine.catalog.db["meta"]
    fd, raw_path = tempfile.mkstemp(prefix="catalog-", suffix=".mdb", dir=work_dir)
    try:
        with env.begin(buffers=False) as txn:
            value = txn.get(b"applied_lsn", db=meta)
            lsn = msgpack.unpackb(value) if value is not None else 0
            env.copyfd(fd, compact=True, txn=txn)
        raw_size = os.fstat(fd).st_size
        os.lseek(fd, 0, os.SEEK_SET)
        out_path = os.path.join(work_dir, f"checkpoint-{lsn:016x}.zst.tmp")
        sha = hashlib.sha256()
        with os.fdopen(os.dup(fd), "rb") as src, open(out_path, "wb") as dst:
            writer = _HashingWriter(dst, sha)
            zstandard.ZstdCompressor(level=level).copy_stream(src, writer)
        return out_path, lsn, raw_size, sha.hexdigest()
    finally:
        os.close(fd)
        os.unlink(raw_path)


class _HashingWriter:
    def __init__(self, f, sha):
        self.f, self.sha = f, sha

    def write(self, data):
        self.sha.update(data)
        return self.f.write(data)


def restore(loc: dict, stores, dest_dir: str) -> int:
    """Fetch a shipped checkpoint (any k of its shards), check it, and write the
    catalog to dest_dir/data.mdb. Returns its log LSN."""
    code, fetch = erasure_code(loc), shard_fetch(loc, stores)
    os.makedirs(dest_dir, exist_ok=True)
    compressed = os.path.join(dest_dir, "checkpoint.zst")
    with open(compressed, "wb") as f:
        sha = code.decode(fetch, f)
    try:
        # a checkpoint found by listing the stores has no recorded SHA-256: its
        # fragments' CRC32Cs were checked while decoding
        if loc.get("sha256") and sha != loc["sha256"]:
            raise ValueError(f"checkpoint {loc['id']}: SHA-256 {sha} is not {loc['sha256']}")
        with open(compressed, "rb") as src, open(os.path.join(dest_dir, "data.mdb"), "wb") as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
    finally:
        os.unlink(compressed)
    return loc["lsn"]
