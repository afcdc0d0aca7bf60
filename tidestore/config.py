"""Node configuration: defaults, a TOML file, environment, command line, in that order.

Every command-line option has a config key of the same name (dashes become
underscores); engine settings live in an `[engine]` table with EngineConfig's names.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields

DEFAULT_LISTEN = "127.0.0.1:9000"
DEFAULT_DATA_DIR = "./tidestore-data"


@dataclass
class NodeConfig:
    data_dir: str = DEFAULT_DATA_DIR
    listen: str = DEFAULT_LISTEN
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    clean_slate: bool = False
    chunk_size: int = 4 << 20  # object bytes are cut into chunks of this size
    ingest_budget: int = 128 << 20  # memory for chunks of uploads in progress, all together
    min_part_size: int = 5 << 20  # S3's minimum for every multipart part but the last
    max_object_size: int = 5 << 40
    virtual_host_domains: list = field(default_factory=lambda: ["localhost"])
    drain_timeout_s: float = 30.0
    engine: dict = field(default_factory=dict)  # EngineConfig overrides
    cold: dict = field(default_factory=dict)  # the [cold] table: tiering.cold_config.ColdConfig
    # ---- a 3-node group (all empty: a single node) ----
    node_id: str = ""  # this node's name in the group
    raft_listen: str = ""  # HOST:PORT for Raft (pysyncobj), as the peers reach it
    data_listen: str = ""  # HOST:PORT for chunk transfers between nodes (TCP)
    control_listen: str = ""  # HOST:PORT (UDP) for the QUIC control plane
    cluster_secret: str | None = None  # shared by all nodes; authenticates every inter-node link
    # the other nodes: [{id, listen, raft, data, control}], plus an optional `route` table
    # of connect addresses (raft/data/control) when a peer is reached through a port
    # forward or proxy rather than at the addresses it binds
    peers: list = field(default_factory=list)
    commit_timeout_s: float = 5.0  # no commit within this (no quorum): 503
    barrier_timeout_s: float = 3.0  # a read cannot be proven fresh within this: 503
    quorum_timeout_s: float = 10.0  # an upload's chunks not on a quorum within this: 503

    @property
    def clustered(self) -> bool:
        return bool(self.peers)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def load(path: str | None = None, **overrides) -> NodeConfig:
    """Defaults < TOML file < TIDESTORE_* environment < explicit overrides (not None)."""
    values: dict = {}
    if path:
        with open(path, "rb") as f:
            values.update(tomllib.load(f))
    known = {f.name for f in fields(NodeConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys in {path}: {', '.join(sorted(unknown))}")
    for name in ("access_key", "secret_key", "data_dir", "listen", "region"):
        env = os.environ.get("TIDESTORE_" + name.upper())
        if env:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    split_listen(values.get("listen", DEFAULT_LISTEN))
    if bool(values.get("access_key")) != bool(values.get("secret_key")):
        raise ValueError("give both an access key and a secret key, or neither")
    env_secret = os.environ.get("TIDESTORE_CLUSTER_SECRET")
    if env_secret and not overrides.get("cluster_secret"):
        values["cluster_secret"] = env_secret
    config = NodeConfig(**values)
    from tiering.cold_config import ColdConfig

    cold = ColdConfig.from_dict(config.cold)  # check it now: a bad [cold] table stops the start
    if config.clustered and cold.enabled and not cold.stores:
        raise ValueError("a group member needs [cold] stores = [...]: the same shard stores on "
                         "every member (s3:// buckets, or directories all members can reach), "
                         "or [cold] enabled = false")
    if config.clustered:
        check_cluster(config)
    return config


PEER_KEYS = ("id", "listen", "raft", "data", "control", "route")


def check_cluster(config: NodeConfig) -> None:
    """A group member's config must name everything its peers need to reach it."""
    missing = [k for k in ("node_id", "raft_listen", "data_listen", "control_listen", "cluster_secret")
               if not getattr(config, k)]
    if missing:
        raise ValueError(f"a node with peers needs: {', '.join(missing)}")
    if not config.access_key:
        raise ValueError("every node of a group must be given the same access_key and secret_key")
    for addr in (config.raft_listen, config.data_listen, config.control_listen):
        split_listen(addr)
    ids = {config.node_id}
    for peer in config.peers:
        if not isinstance(peer, dict) or set(peer) - set(PEER_KEYS) or \
                any(not peer.get(k) for k in ("id", "raft", "data", "control")):
            raise ValueError(f"each [[peers]] entry needs id, raft, data, control (and may give listen): {peer!r}")
        for k in ("raft", "data", "control"):
            split_listen(peer[k])
        route = peer.get("route", {})
        if not isinstance(route, dict) or set(route) - {"raft", "data", "control"}:
            raise ValueError(f"a peer's route gives connect addresses for raft, data, control: {route!r}")
        for addr in route.values():
            split_listen(addr)
        if peer["id"] in ids:
            raise ValueError(f"node id {peer['id']!r} appears twice")
        ids.add(peer["id"])
