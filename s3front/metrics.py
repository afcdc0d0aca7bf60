"""Prometheus metrics of one node at `/_tidestore/metrics`: the LSN timeline (commit,
applied, cold HWM, Raft LWM), the cold tier's lag and shipping, the hot tier.

Values are read from the node's status on each scrape (a custom collector), so there
is no second bookkeeping to drift from what `tidestore status` shows. Like the status
endpoint, it carries no object data or names.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

GAUGES = (
    # (metric, help, path in the status dict)
    ("tidestore_commit_lsn", "Highest log LSN known committed", ("commit_lsn",)),
    ("tidestore_applied_lsn", "Highest log LSN applied and visible on this node", ("applied_lsn",)),
    ("tidestore_cold_hwm", "Cold high-water mark: log LSNs up to it are in cold storage", ("hwm",)),
    ("tidestore_raft_lwm", "Raft low-water mark: the log keeps entries above it (<= HWM)", ("lwm",)),
    ("tidestore_cold_lag_entries", "Log entries above the cold HWM", ("cold", "lag_entries")),
    ("tidestore_cold_lag_bytes", "WAL bytes the shipper still needs", ("cold", "lag_bytes")),
    ("tidestore_hot_bytes", "WAL bytes on this node's disk (the hot tier)", ("cold", "hot_bytes")),
    ("tidestore_hot_budget_bytes", "Hot-tier budget (0: unbounded)", ("cold", "hot_budget")),
    ("tidestore_missing_chunks", "Chunks this node lacks and is fetching from peers", ("missing_chunks",)),
    ("tidestore_cold_slowdown", "1 while writes are refused with SlowDown", ("cold", "slowdown")),
)
COUNTERS = (
    ("tidestore_cold_segments_shipped", "Segments shipped by this node", ("cold", "shipper", "segments_shipped")),
    ("tidestore_cold_bytes_shipped", "Segment bytes shipped by this node", ("cold", "shipper", "bytes_shipped")),
    ("tidestore_cold_evicted_segments", "Hot WAL segments evicted to cold", ("cold", "evicted_segments")),
    ("tidestore_cold_reads", "Chunks read back from cold storage", ("cold", "cold_reads")),
    ("tidestore_cold_slowdowns", "Writes refused with SlowDown", ("cold", "slowdowns")),
)


def _get(status: dict, path: tuple):
    value = status
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, (int, float)) else None


class _NodeCollector:
    def __init__(self):
        self.status: dict = {}

    def collect(self):
        st = self.status
        for families, kind in ((GAUGES, GaugeMetricFamily), (COUNTERS, CounterMetricFamily)):
            for name, doc, path in families:
                value = _get(st, path)
                if value is not None:
                    family = kind(name, doc)
                    family.add_metric([], value)
                    yield family


def metrics_endpoint(node):
    collector = _NodeCollector()
    registry = CollectorRegistry()
    registry.register(collector)

    async def metrics(_request: web.Request) -> web.Response:
        collector.status = node.local_status()
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
