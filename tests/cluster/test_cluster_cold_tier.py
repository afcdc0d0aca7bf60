"""The cold tier in a 3-node group, on real node processes sharing six shard
directories: the leader ships, every replica advances its HWM and evicts, the Raft
journal is truncated up to the HWM (never past it), and every object reads back
identical through every replica, also after the leader is killed mid-run."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from group import Group

MiB = 1 << 20
HOT_BUDGET = 3 * MiB
ENGINE = {"segment_size": MiB, "checkpoint_bytes": MiB, "checkpoint_interval_s": 1.0}
COLD = {"segment_bytes": MiB, "seal_age_s": 0.5, "ship_interval_s": 0.2,
        "hot_budget": HOT_BUDGET, "cache_bytes": 0}


def body(key: str, size: int) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // 32 + 1))[:size - 8] + os.urandom(8)


class WatermarkWatch:
    """Polls every member's status all through the test: LWM must never pass HWM."""

    def __init__(self, group: Group):
        self.group = group
        self.samples = 0
        self.violations: list = []
        self.max_lwm = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            for m in self.group.members:
                if not m.running:
                    continue
                try:
                    st = m.own_status(timeout=2)
                except OSError:
                    continue
                self.samples += 1
                if st.get("lwm") is not None and st["lwm"] > st["hwm"]:
                    self.violations.append((m.id, st["lwm"], st["hwm"]))
                self.max_lwm[m.id] = max(self.max_lwm.get(m.id, 0), st.get("lwm") or 0)
            time.sleep(0.05)

    def close(self):
        self.stop.set()
        self.thread.join()


def put_some(member, bucket: str, prefix: str, count: int, size: int) -> dict:
    client = member.client()
    out = {}
    for i in range(count):
        key = f"{prefix}/{i:04d}"
        data = body(key, size + i * 131)
        client.put_object(Bucket=bucket, Key=key, Body=data)
        out[key] = data
    return out


def wait_settled(group: Group, members, timeout: float = 90.0, evicted: bool = True) -> dict:
    """Every given member shipped what was written so far (its HWM passed the LSN of
    the last write applied as of the call), evicted, and had its journal truncated."""
    target = max(m.own_status()["cold"]["data_lsn"] for m in members)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            sts = {m.id: m.own_status() for m in members}
        except OSError as exc:
            last = exc
            time.sleep(0.3)
            continue
        if all(s["hwm"] >= target and (s["cold"]["evicted_segments"] > 0 or not evicted)
                and s["lwm"] > 1 and s["cold"]["hot_bytes"] <= HOT_BUDGET + 2 * MiB
                for s in sts.values()):
            return sts
        last = {k: (target, s["cold"]["data_lsn"], s["applied_lsn"], s["hwm"], s["lwm"],
                    s["cold"]["evicted_segments"],
                    s["cold"]["hot_bytes"], s["cold"]["shipper"]["state"]) for k, s in sts.items()}
        time.sleep(0.3)
    raise AssertionError(f"the group did not settle: {last}")


@pytest.fixture
def group(tmp_path):
    g = Group(str(tmp_path), cold=COLD, engine=ENGINE).start()
    yield g
    g.close()


def test_group_ships_truncates_evicts_and_every_replica_reads_cold(group):
    watch = WatermarkWatch(group)
    try:
        leader = group.wait_leader()
        leader.client().create_bucket(Bucket="cold")
        written = {}
        for m in group.members:  # writes through every replica
            written.update(put_some(m, "cold", m.id, 12, 256 << 10))
        sts = wait_settled(group, group.members)
        for m in group.members:
            client = m.client()
            for key, data in written.items():
                assert client.get_object(Bucket="cold", Key=key)["Body"].read() == data, (m.id, key)
            assert m.own_status()["cold"]["cold_reads"] > 0, m.id
        # the journal really is shorter than the log
        for mid, st in sts.items():
            assert st["journal_entries"] < st["applied_lsn"] - st["lwm"] + 5, (mid, st)

        # kill -9 the leader mid-run: the new leader takes over shipping
        leader = group.wait_leader()
        leader.kill()
        rest = [m for m in group.members if m is not leader]
        new_leader = group.wait_leader(among=rest, timeout=30)
        hwm_before = new_leader.own_status()["hwm"]
        written.update(put_some(new_leader, "cold", "after-kill", 12, 256 << 10))
        sts = wait_settled(group, rest)
        assert all(s["hwm"] > hwm_before for s in sts.values())
        # the killed node comes back, catches up (the journal kept what it needs) and
        # serves everything
        leader.start()
        wait_settled(group, group.members, evicted=False)  # (its counters restarted at 0)
        client = leader.client()
        for key, data in written.items():
            assert client.get_object(Bucket="cold", Key=key)["Body"].read() == data, key
    finally:
        watch.close()
    assert watch.samples > 50
    assert not watch.violations, watch.violations
    assert all(v > 1 for v in watch.max_lwm.values()), watch.max_lwm
