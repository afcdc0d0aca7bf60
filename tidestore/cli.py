"""The `tidestore` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from . import __version__
from .config import load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidestore", description="A log-authoritative S3 object store.")
    parser.add_argument("--version", action="version", version=f"tidestore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a single node (the embedded default)",
                           description="Serve S3 on one node. With no options: 127.0.0.1:9000, "
                                       "data in ./tidestore-data, credentials generated on first start.")
    serve.add_argument("--config", help="TOML file; every option below has a key of the same name")
    serve.add_argument("--data-dir", help="where the node keeps its data (default ./tidestore-data)")
    serve.add_argument("--listen", help="HOST:PORT for S3 (default 127.0.0.1:9000; port 0 picks a free one)")
    serve.add_argument("--access-key", help="S3 access key (or TIDESTORE_ACCESS_KEY)")
    serve.add_argument("--secret-key", help="S3 secret key (or TIDESTORE_SECRET_KEY)")
    serve.add_argument("--region", help="region reported to clients (default us-east-1)")
    serve.add_argument("--clean-slate", action="store_true", default=None,
                       help="wipe the data directory first (for tests)")
    serve.add_argument("--log-level", default="WARNING", help="Python logging level")

    dev = sub.add_parser("dev-cluster", help="run a local group of node processes (try the cluster on a laptop)",
                         description="Start N real node processes on this machine as one Raft group "
                                     "(S3 on PORT, PORT+1, ...), print endpoints and credentials, and "
                                     "stop them all on Ctrl-C. Restarting on the same directory keeps the data.")
    dev.add_argument("--nodes", type=int, default=3, help="group size (default 3)")
    dev.add_argument("--data-dir", default="./tidestore-cluster", help="where the nodes keep their data")
    dev.add_argument("--port", type=int, default=9000,
                     help="S3 port of the first node (Raft/data/control use PORT+100/+200/+300 + i)")
    dev.add_argument("--host", default="127.0.0.1", help="address every node binds (default 127.0.0.1)")
    dev.add_argument("--access-key", help="S3 access key (or TIDESTORE_ACCESS_KEY)")
    dev.add_argument("--secret-key", help="S3 secret key (or TIDESTORE_SECRET_KEY)")
    dev.add_argument("--log-level", default="WARNING", help="Python logging level of the nodes")

    status = sub.add_parser("status", help="role, term, commit/applied LSN, lag and health of every node",
                            description="Ask one node for the status of the whole group.")
    status.add_argument("--endpoint", default="http://127.0.0.1:9000", help="S3 endpoint of any node")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    recover = sub.add_parser("recover", help="offline crash recovery of a node's data directory, with a report",
                             description="Run crash recovery (what a node does at every start) on a "
                                         "stopped node's data directory and report what it did: records "
                                         "scanned and redone, unfinished uploads rolled back, torn tails cut.")
    recover.add_argument("--data-dir", default="./tidestore-data", help="the node's data directory")
    recover.add_argument("--json", action="store_true", help="machine-readable output")

    inspect = sub.add_parser("inspect", help="WAL segments, catalog and Raft journal of a data directory "
                                             "(read-only), or every member's LSN timeline",
                             description="With --data-dir: what is in a node's data directory (never "
                                         "written). With --endpoint: each member's LWM, HWM, applied and "
                                         "commit LSN, drawn to scale.")
    where = inspect.add_mutually_exclusive_group()
    where.add_argument("--data-dir", help="a node's data directory (default ./tidestore-data)")
    where.add_argument("--endpoint", help="S3 endpoint of any running node")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    verify = sub.add_parser("verify", help="scrub the WAL and the cold shards; --heal rebuilds damaged shards",
                            description="Check every WAL record and every shard of every shipped segment "
                                        "and catalog checkpoint (CRCs, recorded SHA-256); with --heal, "
                                        "rebuild damaged or missing shards from the others. The data "
                                        "directory is only read.")
    verify.add_argument("--data-dir", default="./tidestore-data", help="the node's data directory")
    verify.add_argument("--config", help="the node's TOML file (for its [cold] stores)")
    verify.add_argument("--heal", action="store_true", help="rebuild what can be rebuilt")
    verify.add_argument("--json", action="store_true", help="machine-readable output")

    rebuild = sub.add_parser("rebuild", help="rebuild a whole store from cold storage alone",
                             description="Every replica lost: replay the cold tier's segments into a "
                                         "new data directory, as of the last LSN in cold storage.")
    rebuild.add_argument("--config", required=True, help="a TOML file with the [cold] stores")
    rebuild.add_argument("--into", required=True, help="the new data directory")
    rebuild.add_argument("--json", action="store_true", help="machine-readable output")

    rehydrate = sub.add_parser("rehydrate", help="rebuild a lost member of a running group from cold "
                                                 "storage and its peers",
                               description="A group member's data directory is gone: replay cold storage "
                                           "(newest catalog checkpoint + segments) into it, seed its Raft "
                                           "journal from a peer, and leave it ready to `serve`: it then "
                                           "rejoins and catches up. Resumable: run it again if interrupted.")
    rehydrate.add_argument("--config", required=True, help="the lost member's TOML file")
    rehydrate.add_argument("--force", action="store_true",
                           help="go on when a peer does not answer (see the README for the risk)")
    rehydrate.add_argument("--json", action="store_true", help="machine-readable output")

    restore = sub.add_parser("restore", help="the store as it was at an LSN or a time, into a new directory",
                             description="Replay the cold tier's history up to an LSN or a time into a "
                                         "new data directory, without touching the running group; the "
                                         "restored store reads its chunks from the group's stores "
                                         "(read-only) and ships nothing.")
    restore.add_argument("--config", required=True, help="the group's TOML file (its [cold] stores)")
    restore.add_argument("--into", required=True, help="the new data directory")
    point = restore.add_mutually_exclusive_group(required=True)
    point.add_argument("--lsn", type=int, help="restore the state after this log LSN")
    point.add_argument("--time", help="restore the state at this time (ISO 8601, UTC if no zone; "
                                      "or epoch seconds)")
    restore.add_argument("--bucket", help="restore only this bucket (the others are left out)")
    restore.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def run(coro):
    """The event loop: uvloop where it is installed (less CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, getattr(args, "log_level", "WARNING").upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        from .malloc_tuning import limit_arenas

        limit_arenas()  # before the server starts any thread
        from .server import serve

        try:
            config = load(args.config, data_dir=args.data_dir, listen=args.listen,
                          access_key=args.access_key, secret_key=args.secret_key,
                          region=args.region, clean_slate=args.clean_slate)
        except (OSError, ValueError) as exc:
            print(f"tidestore: {exc}", file=sys.stderr)
            return 2
        run(serve(config))
        return 0
    if args.command == "dev-cluster":
        from . import dev_cluster

        access = args.access_key or os.environ.get("TIDESTORE_ACCESS_KEY")
        secret = args.secret_key or os.environ.get("TIDESTORE_SECRET_KEY")
        if bool(access) != bool(secret):
            print("tidestore: give both an access key and a secret key, or neither", file=sys.stderr)
            return 2
        if not 1 <= args.nodes <= 9 or not 1 <= args.port <= 65535 - 310:
            print("tidestore: --nodes must be 1..9 and --port leave room for PORT+300+nodes", file=sys.stderr)
            return 2
        return dev_cluster.run(args.data_dir, args.nodes, args.port, args.host, access, secret,
                               args.log_level)
    if args.command == "status":
        from . import status_cli

        return status_cli.run(args.endpoint, args.json)
    if args.command == "inspect":
        from . import inspect_cli

        return inspect_cli.run(args.data_dir or "./tidestore-data", args.endpoint, args.json)
    if args.command == "verify":
        from . import verify_cli

        return verify_cli.run(args.data_dir, args.config, args.heal, args.json)
    if args.command == "restore":
        from . import restore_cli

        return restore_cli.run(args.config, args.into, args.lsn, args.time, args.json,
                               bucket=args.bucket)
    if args.command == "rebuild":
        from . import rebuild_cli

        return rebuild_cli.run(args.config, args.into, args.json)
    if args.command == "rehydrate":
        from . import rehydrate_cli

        return rehydrate_cli.run(args.config, args.json, args.force)
    if args.command == "recover":
        from . import recover_cli

        return recover_cli.run(args.data_dir, args.json)
    return 2


if __name__ == "__main__":
    sys.exit(main())
