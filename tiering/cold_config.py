"""Cold tier settings: where shards go, how segments are cut, and the bounds that
keep the hot tier and the Raft log small. Defaults suit a laptop: six `file://`
drives under the data directory, 4 data + 2 parity shards."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from .erasure import DEFAULT_EC_TYPE, DEFAULT_STRIPE_SIZE, ErasureCode
from .shard_store import ShardStore, open_store


@dataclass
class ColdConfig:
    enabled: bool = True
    # read the stores, never write them: a store restored to a point in time reads its
    # chunks from the running group's cold tier and must not ship into it
    read_only: bool = False
    # shard stores, `file://DIR` or `s3://bucket/prefix`; shard i goes to stores[i % n].
    # Every member of a group must list the same stores in the same order.
    # Empty: `file://<data_dir>/cold/drive-0..k+m-1` (the embedded default).
    stores: list = field(default_factory=list)
    k: int = 4  # data shards
    m: int = 2  # parity shards: any m shards (stores) may be lost
    ec_type: str = DEFAULT_EC_TYPE
    stripe_size: int = DEFAULT_STRIPE_SIZE
    zstd_level: int = 3
    # S3 options for s3:// stores (credentials never appear in URLs or messages)
    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    create_bucket: bool = True
    timeout_s: float = 5.0
    # sealing: a segment is cut once the unshipped chunk bytes reach segment_bytes, or
    # once the oldest unshipped entry has waited seal_age_s
    segment_bytes: int = 32 << 20
    seal_age_s: float = 30.0
    ship_interval_s: float = 1.0  # how often the shipper looks for work
    retry_max_s: float = 30.0  # shipping backoff cap after failures
    # ship a catalog checkpoint every this many segments (0: never), so a rebuild from
    # cold storage replays only the segments after the latest one
    checkpoint_segments: int = 16
    # cold compaction: shipped segments whose live chunks are at most this fraction of
    # their bytes are rewritten (0: never) once a checkpoint covers them and they are
    # older than history_retention_s (the history point-in-time restores can reach)
    compact_live_ratio: float = 0.5
    history_retention_s: float = 7 * 86400.0
    compact_interval_s: float = 60.0  # how often the leader looks for segments to rewrite
    compact_delete_grace_s: float = 60.0  # replaced shards are deleted this long after
    # garbage: shards of segments no catalog row names (orphans of shipments or
    # compactions whose entry never committed, originals a crash left undeleted), at or
    # below the HWM, are deleted by the leader once older than this (0: never)
    garbage_age_s: float = 3600.0
    garbage_interval_s: float = 600.0  # how often the leader lists the stores for garbage
    # the hot tier: WAL bytes a node keeps on disk before evicting segments whose live
    # chunks are all in cold storage (0: never evict)
    hot_budget: int = 8 << 30
    cache_bytes: int = 256 << 20  # local cache of chunks read back from cold storage
    # writes get 503 SlowDown once this much is above the HWM (cold storage down/slow)
    max_lag_bytes: int = 2 << 30
    max_lag_entries: int = 2_000_000

    @classmethod
    def from_dict(cls, values: dict) -> "ColdConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown [cold] keys: {', '.join(sorted(unknown))}")
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        ErasureCode(self.k, self.m, self.ec_type, self.stripe_size)  # raises ValueError
        for url in self.stores:
            if not isinstance(url, str) or not url.startswith(("file://", "s3://")):
                raise ValueError(f"[cold] stores: {url!r} is not file://DIR or s3://bucket/prefix")
        if self.segment_bytes <= 0 or self.seal_age_s <= 0 or self.ship_interval_s <= 0:
            raise ValueError("[cold] segment_bytes, seal_age_s and ship_interval_s must be positive")
        if not 0 <= self.compact_live_ratio < 1 or self.history_retention_s < 0:
            raise ValueError("[cold] compact_live_ratio must be in [0, 1), history_retention_s >= 0")
        if self.hot_budget < 0 or self.cache_bytes < 0 or self.checkpoint_segments < 0:
            raise ValueError("[cold] hot_budget, cache_bytes and checkpoint_segments must be >= 0")
        if self.max_lag_bytes <= 0 or self.max_lag_entries <= 0:
            raise ValueError("[cold] max_lag_bytes and max_lag_entries must be positive")

    def store_urls(self, data_dir: str) -> list[str]:
        if self.stores:
            return list(self.stores)
        base = os.path.abspath(os.path.join(data_dir, "cold"))
        return [f"file://{base}/drive-{i}" for i in range(self.k + self.m)]

    def open_stores(self, data_dir: str, create: bool = True) -> list[ShardStore]:
        """`create=False` for the tools that only read cold storage (rebuild, restore,
        rehydrate, verify without --heal): a wrong path is a missing store."""
        s3 = dict(endpoint_url=self.endpoint_url, access_key=self.access_key,
                  secret_key=self.secret_key, region=self.region,
                  create_bucket=self.create_bucket, timeout=self.timeout_s)
        return [open_store(url, create, **s3) if url.startswith("s3://") else open_store(url, create)
                for url in self.store_urls(data_dir)]

    def erasure(self) -> ErasureCode:
        return ErasureCode(self.k, self.m, self.ec_type, self.stripe_size)
