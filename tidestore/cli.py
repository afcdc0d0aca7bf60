"""The `tidestore` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
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
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING),
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
    return 2


if __name__ == "__main__":
    sys.exit(main())
