"""Running a node's S3 endpoint: bind, announce, serve, drain on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from engine import DirectoryInUse
from raftlog import JournalLost
from s3front.app import make_app

from .config import NodeConfig
from .node import Node

log = logging.getLogger("tidestore")


async def serve(config: NodeConfig, out=sys.stdout) -> None:
    try:
        node = Node(config)
    except (DirectoryInUse, JournalLost) as exc:
        raise SystemExit(f"tidestore: {exc}") from None
    try:
        await node.start()
    except OSError as exc:
        await node.close()
        raise SystemExit(f"tidestore: cannot start the group's listeners: {exc}") from None
    report = node.engine.recovery_report
    runner = web.AppRunner(make_app(node), access_log=None,
                           shutdown_timeout=config.drain_timeout_s, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await node.close()
        raise SystemExit(f"tidestore: cannot listen on {config.listen}: {exc.strerror}") from None
    host, port = runner.addresses[0][:2]
    node.advertised = f"{host}:{port}"
    if report.records_redone or report.txns_undone or report.tail_cut:
        print(f"Recovered: {report.records_redone} entries redone, {report.txns_undone} unfinished "
              f"uploads rolled back, {len(report.tail_cut)} torn tail(s) cut, in {report.duration_s:.3f}s",
              file=out)
    if node.generated_credentials:
        print("Generated credentials (stored in the data directory):", file=out)
    print(f"Access key: {node.access_key}", file=out)
    print(f"Secret key: {node.secret_key}", file=out)
    print(f"Data directory: {config.data_dir}", file=out)
    if config.clustered:
        print(f"Group member {config.node_id} (raft {config.raft_listen}, data {config.data_listen}, "
              f"control {config.control_listen}); peers: "
              + ", ".join(p["id"] for p in config.peers), file=out)
    print(f"Tidestore listening on http://{host}:{port}", file=out, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    in_flight = runner.app["in_flight"]
    print(f"Shutting down: draining {in_flight.count} in-flight request(s)", file=out, flush=True)
    await site.stop()  # no new connections
    if not await in_flight.drained(config.drain_timeout_s):
        print(f"Drain timeout: {in_flight.count} request(s) cut off", file=out, flush=True)
    await runner.cleanup()  # closes idle keep-alive connections
    await node.close()  # final checkpoint: the next start recovers nothing
    print("Stopped cleanly", file=out, flush=True)
