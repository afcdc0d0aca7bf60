"""`tidestore status`: the group as one node sees it, for people and for scripts."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

COLUMNS = (("NODE", "node_id"), ("ROLE", "role"), ("TERM", "term"), ("LWM", "lwm"),
           ("HWM", "hwm"), ("COMMIT", "commit_lsn"), ("APPLIED", "applied_lsn"), ("LAG", "lag"),
           ("MISSING", "missing_chunks"), ("COLD", "cold_state"), ("HEALTH", "health"), ("S3", "s3"))


def fetch(endpoint: str, timeout: float = 5.0) -> dict:
    url = endpoint.rstrip("/") + "/_tidestore/status"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


def table(members: list) -> str:
    rows = []
    for m in members:
        row = dict(m)
        row["health"] = "ok" if m.get("healthy") else "DOWN: " + str(m.get("error", "unhealthy"))[:60]
        row["cold_state"] = _cold_state(m.get("cold"))
        rows.append([str(row.get(key, "-") if row.get(key) is not None else "-") for _h, key in COLUMNS])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _k) in enumerate(COLUMNS)]
    lines = ["  ".join(h.ljust(w) for (h, _k), w in zip(COLUMNS, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _cold_state(cold: dict | None) -> str | None:
    """The cold tier in a word or two: why writes may be refused, at a glance."""
    if not cold:
        return None
    shipper = cold.get("shipper") or {}
    state = shipper.get("state", "?")
    if cold.get("slowdown"):
        state = "SLOWDOWN"
    if shipper.get("last_error"):
        state += f" ({shipper['failures']} failures: {shipper['last_error'][:50]})"
    return f"{state}, lag {cold.get('lag_entries', 0)}"


def run(endpoint: str, as_json: bool, out=sys.stdout) -> int:
    """0: every member healthy; 1: some member down or lagging unreachable; 2: no answer."""
    try:
        status = fetch(endpoint)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"tidestore: no status from {endpoint}: {reason}", file=sys.stderr)
        return 2
    members = status.get("members", [])
    if as_json:
        json.dump(status, out, indent=2)
        out.write("\n")
    else:
        print(table(members), file=out)
    return 0 if members and all(m.get("healthy") for m in members) else 1
