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
    return NodeConfig(**values)
