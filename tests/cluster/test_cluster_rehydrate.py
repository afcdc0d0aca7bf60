"""A member's data directory is lost (`rm -rf` after a kill -9) while the other two
keep taking writes; `tidestore rehydrate` rebuilds it from the cold tier and its
peers (interrupted once with SIGKILL, then resumed), the member is started and
rejoins, and all three replicas end with identical catalogs, every acknowledged
object reading back identical through the rehydrated one. Then every replica is
lost, and `tidestore rebuild` makes the same store from the group's cold storage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from group import ROOT, Group, catalog
from tidestore.testing import start, stop
from test_cluster_cold_tier import body, put_some

MiB = 1 << 20
ENGINE = {"segment_size": MiB, "checkpoint_bytes": MiB, "checkpoint_interval_s": 1.0}
COLD = {"segment_bytes": 128 << 10, "seal_age_s": 0.3, "ship_interval_s": 0.1, "cache_bytes": 0,
        "hot_budget": 2 * MiB,  # the peers evict: old chunks are read from cold storage
        "checkpoint_segments": 3}


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}


def rehydrate(cfg: str, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidestore", "rehydrate", "--config", cfg, *extra],
                          capture_output=True, text=True, timeout=180, env=_env())


def lose_disk(member, tmp_path) -> str:
    """kill -9 a member and delete its data directory; returns its config's path (kept
    outside the lost directory, as an operator's config would be)."""
    member.kill()
    shutil.rmtree(member.data_dir)
    cfg = str(tmp_path / f"{member.id}.toml")
    with open(cfg, "w") as f:
        f.write(member.config_text())
    return cfg


class Writer(threading.Thread):
    """Keeps writing through the given members; remembers what was acknowledged."""

    def __init__(self, members, bucket: str):
        super().__init__(daemon=True)
        self.members, self.bucket = members, bucket
        self.acked: dict = {}
        self.errors = 0
        self.stop = threading.Event()

    def run(self):
        clients = [m.client() for m in self.members]
        i = 0
        while not self.stop.is_set():
            key = f"during/{i:05d}"
            data = body(key, 20_000 + (i % 7) * 9_000)
            try:
                clients[i % len(clients)].put_object(Bucket=self.bucket, Key=key, Body=data)
                self.acked[key] = data
            except Exception:  # noqa: BLE001 - not acknowledged: not expected back
                self.errors += 1
            i += 1


def wait_shipped(group: Group, members, timeout: float = 90.0) -> int:
    target = max(m.own_status()["cold"]["data_lsn"] for m in members)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(m.own_status()["hwm"] >= target for m in members):
            return target
        time.sleep(0.2)
    raise AssertionError(f"cold storage did not reach LSN {target}")


def test_a_lost_member_is_rehydrated_while_the_group_keeps_writing(tmp_path):
    group = Group(str(tmp_path), cold=COLD, engine=ENGINE).start()
    writer = None
    try:
        leader = group.wait_leader()
        leader.client().create_bucket(Bucket="rehy")
        written = {}
        for m in group.members:
            written.update(put_some(m, "rehy", f"before-{m.id}", 20, 96 << 10))
        for i in range(0, 20, 3):  # some history: overwrites and deletes
            key = f"before-{group[0].id}/{i:04d}"
            written[key] = data = body(key + "v2", 50_000)
            leader.client().put_object(Bucket="rehy", Key=key, Body=data)
        for i in range(1, 20, 4):
            key = f"before-{group[1].id}/{i:04d}"
            leader.client().delete_object(Bucket="rehy", Key=key)
            del written[key]
        wait_shipped(group, group.members)
        assert os.listdir(os.path.join(group.cold["stores"][0][len("file://"):], "checkpoints"))

        victim = next(m for m in group.members if m is not group.wait_leader())
        survivors = [m for m in group.members if m is not victim]
        cfg = lose_disk(victim, tmp_path)
        writer = Writer(survivors, "rehy")
        writer.start()

        # interrupted half way (SIGKILL while it replays cold storage) ...
        proc = subprocess.Popen([sys.executable, "-m", "tidestore", "rehydrate", "--config", cfg],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        seen = b""
        while b"segment " not in seen:
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, f"rehydrate ended before it could be interrupted: {seen!r}"
            seen += chunk
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert os.path.exists(os.path.join(victim.data_dir, "REHYDRATING"))
        refused = subprocess.run([sys.executable, "-m", "tidestore", "serve", "--config", cfg],
                                 capture_output=True, text=True, timeout=60, env=_env())
        assert refused.returncode != 0 and "has not finished" in refused.stderr, refused.stderr

        # ... and resumed
        time.sleep(1.0)  # the survivors take writes meanwhile
        out = rehydrate(cfg, "--json")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["resumed_from_lsn"] > 0 and rep["anchor_lsn"] >= rep["resumed_from_lsn"], rep
        assert rep["checkpoint_lsn"] > 0, rep  # started from a catalog checkpoint, not LSN 1
        assert not os.path.exists(os.path.join(victim.data_dir, "REHYDRATING"))
        again = rehydrate(cfg)
        assert again.returncode == 2 and "holds a member's data" in again.stderr

        time.sleep(1.0)
        victim.start()
        time.sleep(2.0)  # it rejoins while the writes go on
        writer.stop.set()
        writer.join(30)
        assert len(writer.acked) > 20, (len(writer.acked), writer.errors)
        written.update(writer.acked)
        group.wait_converged(timeout=90)
        catalogs = {m.id: catalog(m.client()) for m in group.members}
        assert catalogs[victim.id] == catalogs[survivors[0].id] == catalogs[survivors[1].id]
        assert set(catalogs[victim.id]["rehy"]) == set(written)
        client = victim.client()
        for key, data in written.items():
            assert client.get_object(Bucket="rehy", Key=key)["Body"].read() == data, key
        st = victim.own_status()
        assert st["applied_lsn"] == survivors[0].own_status()["applied_lsn"]
        # and it is a full member again: it takes writes itself
        client.put_object(Bucket="rehy", Key="after", Body=b"back")
        for m in survivors:
            assert m.client().get_object(Bucket="rehy", Key="after")["Body"].read() == b"back"

        # every replica lost: the group's cold storage alone rebuilds the same store
        written["after"] = b"back"
        wait_shipped(group, group.members)
        expected = catalog(leader.client())
        into = str(tmp_path / "rebuilt")
        out = subprocess.run([sys.executable, "-m", "tidestore", "rebuild", "--config", cfg,
                              "--into", into, "--json"], capture_output=True, text=True,
                             timeout=180, env=_env())
        assert out.returncode == 0, out.stderr
        rebuilt_cfg = json.loads(out.stdout)["config"]
        # a group member's config would number new entries from 1 again: refused
        refused = subprocess.run([sys.executable, "-m", "tidestore", "serve", "--config", cfg,
                                  "--data-dir", into], capture_output=True, text=True,
                                 timeout=60, env=_env())
        assert refused.returncode != 0 and "journal" in refused.stderr and "Traceback" not in refused.stderr
        for m in group.members:  # a rebuilt store ships into the same stores: never beside the group
            m.stop()
        srv = start(into, extra_args=("--config", rebuilt_cfg))
        try:
            s3 = srv.boto3_client()
            assert catalog(s3) == expected
            for key, data in written.items():
                assert s3.get_object(Bucket="rehy", Key=key)["Body"].read() == data, key
        finally:
            stop(srv)
    finally:
        if writer is not None:
            writer.stop.set()
        group.close()


def test_rehydrate_refuses_what_it_cannot_do_safely(tmp_path):
    group = Group(str(tmp_path), cold=COLD, engine=ENGINE)
    victim, peer = group[0], group[1]
    cfg = str(tmp_path / "n1.toml")
    with open(cfg, "w") as f:
        f.write(victim.config_text())
    try:
        # the group is not running: no peer answers
        out = rehydrate(cfg)
        assert out.returncode == 1 and "no peer answered" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        # a live member's directory is never overwritten
        os.makedirs(os.path.join(victim.data_dir, "engine"))
        out = rehydrate(cfg)
        assert out.returncode == 2 and "holds a member's data" in out.stderr
        # one peer down: refused unless forced
        shutil.rmtree(victim.data_dir)
        peer.start()
        out = rehydrate(cfg)
        assert out.returncode == 1 and "--force" in out.stderr, out.stderr
    finally:
        group.close()


def test_a_rehydrated_member_elects_no_one_until_it_holds_what_was_committed(tmp_path):
    """Below its vote floor a rehydrated member neither votes nor stands: with the
    leader gone before it caught up, the group waits (503) rather than elect a leader
    with the vote of a member that forgot what it had acknowledged; once the old
    leader is back, it catches up and is a full member again."""
    import msgpack

    group = Group(str(tmp_path), cold=COLD, engine=ENGINE).start()
    try:
        leader = group.wait_leader()
        leader.client().create_bucket(Bucket="floor")
        written = put_some(leader, "floor", "k", 12, 64 << 10)
        wait_shipped(group, group.members)
        victim = next(m for m in group.members if m is not leader)
        other = next(m for m in group.members if m not in (leader, victim))
        cfg = lose_disk(victim, tmp_path)
        out = rehydrate(cfg, "--json")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["vote_floor"] > rep["anchor_lsn"]
        leader.kill()  # before the rehydrated member could catch up
        victim.start()
        deadline = time.monotonic() + 6.0  # several election timeouts: no leader at any look
        while time.monotonic() < deadline:
            assert group.leader(among=[victim, other]) is None
            time.sleep(0.1)
        try:
            other.client().put_object(Bucket="floor", Key="refused", Body=b"x")
            raise AssertionError("a write was accepted without a leader")
        except Exception as exc:  # noqa: BLE001
            assert "503" in str(exc) or "ServiceUnavailable" in str(exc) or "SlowDown" in str(exc), exc
        leader.start()
        group.wait_leader(timeout=30)
        group.wait_converged(timeout=60)
        with open(os.path.join(victim.data_dir, "raft", "meta.msgpack"), "rb") as f:
            assert "vote_floor" not in msgpack.unpackb(f.read(), raw=False)
        client = victim.client()
        for key, data in written.items():
            assert client.get_object(Bucket="floor", Key=key)["Body"].read() == data
    finally:
        group.close()


def test_rehydrate_before_anything_was_shipped(tmp_path):
    """A young group whose cold storage is still empty: nothing was truncated either,
    so the member starts from LSN 1 and takes everything from its peers."""
    cold = {**COLD, "segment_bytes": 1 << 30, "seal_age_s": 3600}
    group = Group(str(tmp_path), cold=cold, engine=ENGINE).start()
    try:
        leader = group.wait_leader()
        leader.client().create_bucket(Bucket="young")
        written = put_some(leader, "young", "k", 10, 50_000)
        victim = next(m for m in group.members if m is not leader)
        cfg = lose_disk(victim, tmp_path)
        out = rehydrate(cfg, "--json")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["anchor_lsn"] == 0 and rep["vote_floor"] > 0, rep
        victim.start()
        group.wait_converged(timeout=60)
        assert catalog(victim.client()) == catalog(leader.client())
        for key, data in written.items():
            assert victim.client().get_object(Bucket="young", Key=key)["Body"].read() == data
    finally:
        group.close()
