"""The inter-node data path over real sockets on 127.0.0.1 between real engines:
pushing an upload's chunks to peers, quorum of durable acks, abort, fetch, mutual
authentication with the cluster secret, and bounded memory with a stalled peer."""

import asyncio
import contextlib
import hashlib
import os
import socket
import time
import tracemalloc

import pytest

from engine import Engine
from engine import entries as E
from raftlog import data_wire as wire
from raftlog.data_client import DataClient, PeerUnavailable, QuorumNotReached
from raftlog.data_server import DataServer

SECRET = "s3cret-of-the-cluster"
MIB = 1 << 20


def run(coro, timeout=20):
    asyncio.run(asyncio.wait_for(coro, timeout))


def chunk(data: bytes) -> tuple[bytes, bytes]:
    return hashlib.sha256(data).digest(), data


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def peer_nodes(tmp_path, n=2, secret=SECRET):
    engines = [Engine(str(tmp_path / f"p{i}"), maintenance_interval_s=0) for i in range(n)]
    servers = [DataServer("127.0.0.1", 0, secret, e, node_id=f"p{i}") for i, e in enumerate(engines)]
    for s in servers:
        await s.start()
    try:
        yield engines, {f"p{i}": ("127.0.0.1", s.port) for i, s in enumerate(servers)}
    finally:
        for s in servers:
            await s.close()
        for e in engines:
            e.close()


async def send_all(up, chunks):
    await asyncio.to_thread(lambda: [up.send_chunk(cid, data) for cid, data in chunks])


async def until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def commit(engine, lsn, txn, key, chunks):
    data = b"".join(d for _c, d in chunks)
    if engine.bucket("b") is None:
        assert engine.apply(lsn - 1, E.CreateBucket("b", 1)).ok
    entry = E.PutObject("b", key, len(data), hashlib.md5(data).hexdigest(),
                        [(c, len(d)) for c, d in chunks], 1000, {}, txn_id=txn)
    assert engine.apply(lsn, entry).ok


def read_object(engine, key):
    with engine.open_object("b", key) as r:
        return b"".join(bytes(p) for p in r.read())


def test_push_to_two_peers_then_commit_makes_identical_objects(tmp_path):
    chunks = [chunk(os.urandom(MIB)) for _ in range(20)] + [chunk(b"7 bytes")]
    txn = os.urandom(16)

    async def main():
        async with peer_nodes(tmp_path) as (engines, addrs):
            client = DataClient(SECRET, addrs, node_id="coord")
            up = client.open_upload(txn)
            await send_all(up, chunks)
            assert sorted(await up.wait_quorum(2, timeout=10)) == ["p0", "p1"]
            up.close()
            for e in engines:
                assert e.stats()["open_txns"] == 1
                commit(e, 2, txn, "obj", chunks)
                assert e.stats()["open_txns"] == 0
                assert read_object(e, "obj") == b"".join(d for _c, d in chunks)
                assert not e.missing_chunks()
            await client.close()

    run(main())


def test_concurrent_uploads_each_reach_quorum(tmp_path):
    bodies = [[chunk(os.urandom(256 << 10)) for _ in range(4)] for _ in range(6)]

    async def main():
        async with peer_nodes(tmp_path) as (engines, addrs):
            client = DataClient(SECRET, addrs)
            for _round in range(2):  # the second round runs on pooled connections
                uploads = {os.urandom(16): c for c in bodies}
                ups = {txn: client.open_upload(txn) for txn in uploads}
                await asyncio.gather(*(send_all(ups[t], c) for t, c in uploads.items()))
                for up in ups.values():
                    assert len(await up.wait_quorum(2, timeout=10)) == 2
                    up.abort()
                for e in engines:
                    await until(lambda: e.stats()["open_txns"] == 0)
            await client.close()

    run(main())


def test_a_slow_peer_whose_entry_was_applied_keeps_the_rest_of_the_upload(tmp_path):
    """The coordinator proposes once a quorum holds the chunks; a slower peer may
    apply the entry while the rest of the upload is still on its way to it. The
    chunks arriving after that, even before the entry's catalog change is published,
    fill in what the entry marked missing there (no fetch needed later) and are
    acknowledged: the peer is not dropped."""
    chunks = [chunk(os.urandom(256 << 10)) for _ in range(6)]
    txn = os.urandom(16)

    async def main():
        async with peer_nodes(tmp_path) as (engines, addrs):
            client = DataClient(SECRET, addrs, node_id="coord")
            up = client.open_upload(txn)
            await send_all(up, chunks[:2])
            assert sorted(await up.wait_quorum(2, timeout=10)) == ["p0", "p1"]
            slow = engines[1]
            assert slow.apply(1, E.CreateBucket("b", 1)).ok
            entry = E.PutObject("b", "obj", 6 * (256 << 10), "0" * 32,
                                [(c, len(d)) for c, d in chunks], 1000, {}, txn_id=txn)
            change = slow.submit(2, entry)  # applied with 4 of its 6 chunks not here;
            await send_all(up, chunks[2:])  # the rest may arrive before it is published
            assert sorted(await up.wait_quorum(2, timeout=10)) == ["p0", "p1"]
            up.close()
            assert change.wait().ok
            assert slow.missing_chunks() == []
            assert read_object(slow, "obj") == b"".join(d for _c, d in chunks)
            assert slow.stats()["open_txns"] == 0  # the late chunks opened nothing
            await client.close()

    run(main())


def test_a_slow_peer_that_gets_a_whole_upload_after_its_entry_fills_it_in(tmp_path):
    """The whole upload, one chunk or several, may reach the slower peer after it
    applied the entry: the first push must not open the committed transaction again
    (its chunks would sit in a transaction nothing commits until the reaper)."""
    async def main():
        async with peer_nodes(tmp_path, n=1) as (engines, addrs):
            slow = engines[0]
            assert slow.apply(1, E.CreateBucket("b", 1)).ok
            client = DataClient(SECRET, addrs, node_id="coord")
            for lsn, n in ((2, 1), (3, 3)):
                chunks = [chunk(os.urandom(100_000)) for _ in range(n)]
                txn = os.urandom(16)
                data = b"".join(d for _c, d in chunks)
                entry = E.PutObject("b", f"obj{n}", len(data), hashlib.md5(data).hexdigest(),
                                    [(c, len(d)) for c, d in chunks], 1000, {}, txn_id=txn)
                assert slow.apply(lsn, entry).ok
                assert len(slow.missing_chunks()) == n
                up = client.open_upload(txn)
                await send_all(up, chunks)
                assert await up.wait_quorum(1, timeout=10) == ["p0"]
                up.close()
                assert slow.missing_chunks() == []
                assert read_object(slow, f"obj{n}") == data
                assert slow.stats()["open_txns"] == 0
            await client.close()

    run(main())


def test_a_push_into_a_transaction_that_no_longer_exists_is_refused(tmp_path):
    """A chunk nothing references, pushed into a transaction the peer has already
    rolled back (reaped as a loser), is refused and the peer dropped, as before."""
    chunks = [chunk(os.urandom(64 << 10)) for _ in range(3)]
    txn = os.urandom(16)

    async def main():
        async with peer_nodes(tmp_path, n=1) as (engines, addrs):
            client = DataClient(SECRET, addrs, node_id="coord")
            up = client.open_upload(txn)
            await send_all(up, chunks[:1])
            assert await up.wait_quorum(1, timeout=10) == ["p0"]
            assert engines[0].reap_expired(timeout_s=0) == [txn]
            await send_all(up, chunks[1:])
            with pytest.raises(QuorumNotReached):
                await up.wait_quorum(1, timeout=3)
            up.abort()
            await client.close()

    run(main())


def test_a_down_peer_leaves_a_quorum_of_one(tmp_path):
    chunks = [chunk(os.urandom(64 << 10)) for _ in range(3)]

    async def main():
        async with peer_nodes(tmp_path, n=1) as (_engines, addrs):
            client = DataClient(SECRET, {**addrs, "down": ("127.0.0.1", closed_port())})
            up = client.open_upload(os.urandom(16))
            await send_all(up, chunks)
            assert await up.wait_quorum(1, timeout=5) == ["p0"]
            t0 = time.monotonic()
            with pytest.raises(QuorumNotReached):
                await up.wait_quorum(2, timeout=2)
            assert time.monotonic() - t0 < 2.5
            up.abort()
            await client.close()

    run(main())


def test_quorum_times_out_when_a_peer_never_acknowledges(tmp_path):
    async def main():
        async with stalled_server() as port:
            client = DataClient(SECRET, {"mute": ("127.0.0.1", port)}, peer_timeout=5)
            up = client.open_upload(os.urandom(16))
            await send_all(up, [chunk(b"x" * 1000)])
            t0 = time.monotonic()
            with pytest.raises(QuorumNotReached, match="within 0.5s"):
                await up.wait_quorum(1, timeout=0.5)
            assert time.monotonic() - t0 < 1.0
            await client.close()

    run(main())


def test_a_client_without_the_secret_is_refused_before_any_engine_call(tmp_path):
    async def main():
        async with peer_nodes(tmp_path, n=1) as (engines, addrs):
            host, port = addrs["p0"]
            # our own client gives up as soon as the server's proof fails...
            client = DataClient("not-the-secret", addrs)
            up = client.open_upload(os.urandom(16))
            await send_all(up, [chunk(b"data")])
            with pytest.raises(QuorumNotReached, match="did not prove the cluster secret"):
                await up.wait_quorum(1, timeout=5)
            with pytest.raises(PeerUnavailable):
                await client.fetch_chunk(hashlib.sha256(b"data").digest())
            await client.close()
            # ...and a hostile one that answers with a made-up proof and pushes anyway
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(wire.MAGIC + os.urandom(32) + b"\x00")
            await reader.readexactly(len(wire.MAGIC) + 32 + 1 + len(b"p0") + 32)
            writer.write(os.urandom(32))
            writer.write(os.urandom(4096))  # where frames would follow
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed on us
            writer.close()
            assert engines[0].stats()["open_txns"] == 0

    run(main())


def test_a_server_without_the_secret_makes_the_client_fail(tmp_path):
    async def main():
        async with peer_nodes(tmp_path, n=1, secret="impostor") as (engines, addrs):
            client = DataClient(SECRET, addrs)
            up = client.open_upload(os.urandom(16))
            await send_all(up, [chunk(b"data")])
            with pytest.raises(QuorumNotReached, match="server did not prove"):
                await up.wait_quorum(1, timeout=5)
            with pytest.raises(PeerUnavailable, match="server did not prove"):
                await client.fetch_chunk(hashlib.sha256(b"data").digest())
            assert engines[0].stats()["open_txns"] == 0
            await client.close()

    run(main())


def test_a_chunk_that_does_not_match_its_id_is_refused(tmp_path):
    good = chunk(b"good chunk")

    async def main():
        async with peer_nodes(tmp_path, n=1) as (engines, addrs):
            client = DataClient(SECRET, addrs)
            up = client.open_upload(os.urandom(16))
            await send_all(up, [good, (hashlib.sha256(b"other").digest(), b"tampered")])
            with pytest.raises(QuorumNotReached, match="does not match its content"):
                await up.wait_quorum(1, timeout=5)
            up.abort()
            await until(lambda: engines[0].stats()["open_txns"] == 0)
            assert not engines[0].has_chunk(good[0])
            await client.close()

    run(main())


def test_abort_rolls_the_transaction_back_on_every_peer(tmp_path):
    chunks = [chunk(os.urandom(100_000)) for _ in range(3)]
    txn = os.urandom(16)

    async def main():
        async with peer_nodes(tmp_path) as (engines, addrs):
            client = DataClient(SECRET, addrs)
            up = client.open_upload(txn)
            await send_all(up, chunks)
            await up.wait_quorum(2, timeout=5)
            assert [e.stats()["open_txns"] for e in engines] == [1, 1]
            up.abort()
            await until(lambda: all(e.stats()["open_txns"] == 0 for e in engines))
            with pytest.raises(QuorumNotReached):
                await up.wait_quorum(1, timeout=1)
            # a late push of the same transaction cannot reopen it
            late = client.open_upload(txn)
            await send_all(late, chunks[:1])
            with pytest.raises(QuorumNotReached, match="was aborted"):
                await late.wait_quorum(1, timeout=5)
            assert [e.stats()["open_txns"] for e in engines] == [0, 0]
            await client.close()

    run(main())


def test_fetch_chunk_from_the_first_peer_that_has_it(tmp_path):
    held = [chunk(os.urandom(3 * MIB)), chunk(b"small")]

    async def main():
        async with peer_nodes(tmp_path) as (engines, addrs):
            holder = engines[1]
            txn = holder.begin()
            for cid, data in held:
                holder.write_chunk(txn, data, cid)
            holder.wait_durable()
            commit(holder, 2, txn, "k", held)

            client = DataClient(SECRET, {"down": ("127.0.0.1", closed_port()), **addrs})
            for cid, data in held:
                assert await client.fetch_chunk(cid) == data  # down, p0 lacks it, p1 has it
                assert await client.fetch_chunk(cid, peers=["p1"]) == data
                with pytest.raises(PeerUnavailable):
                    await client.fetch_chunk(cid, peers=["down", "p0"])
            unknown = hashlib.sha256(b"nobody has this").digest()
            with pytest.raises(PeerUnavailable):
                await client.fetch_chunk(unknown)
            assert await client.has_chunks("p1", [held[0][0], unknown, held[1][0]]) == [True, False, True]
            assert await client.has_chunks("p0", [held[0][0]]) == [False]
            with pytest.raises(PeerUnavailable):
                await client.has_chunks("down", [unknown])
            await client.close()

    run(main())


@contextlib.asynccontextmanager
async def stalled_server():
    """A peer that completes the handshake, then never reads nor answers."""
    conns = []
    done = asyncio.Event()

    async def serve(reader, writer):
        conns.append(writer)
        await wire.server_handshake(reader, writer, wire.secret_key(SECRET), "mute")
        await done.wait()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        done.set()
        for w in conns:
            w.transport.abort()


def test_a_peer_that_stops_reading_is_dropped_and_memory_stays_bounded(tmp_path):
    n = 48
    deaf = socket.socket()  # accepts connections (kernel backlog), never reads
    deaf.bind(("127.0.0.1", 0))
    deaf.listen()

    async def main():
        async with peer_nodes(tmp_path, n=1) as (engines, addrs), stalled_server() as port:
            client = DataClient(SECRET, {**addrs, "mute": ("127.0.0.1", port),
                                         "deaf": deaf.getsockname()}, peer_timeout=0.5)
            up = client.open_upload(os.urandom(16))
            ids = []

            def produce():  # each chunk is new memory the uploader drops after sending
                for _ in range(n):
                    data = os.urandom(MIB)
                    cid = hashlib.sha256(data).digest()
                    ids.append(cid)
                    up.send_chunk(cid, data)
                    del data

            tracemalloc.start()
            try:
                t0 = time.monotonic()
                await asyncio.to_thread(produce)
                elapsed = time.monotonic() - t0
                _now, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert elapsed < 5
            assert peak < 20 * MIB, f"peak {peak / MIB:.1f} MiB for {n} MiB pushed"
            assert await up.wait_quorum(1, timeout=5) == ["p0"]
            with pytest.raises(QuorumNotReached, match="mute.*deaf|deaf.*mute"):
                await up.wait_quorum(2, timeout=1)
            assert engines[0].stats()["open_txns"] == 1
            up.abort()
            await until(lambda: engines[0].stats()["open_txns"] == 0)
            await client.close()

    try:
        run(main())
    finally:
        deaf.close()


def test_send_chunk_refuses_the_event_loop_thread(tmp_path):
    async def main():
        async with peer_nodes(tmp_path, n=1) as (_engines, addrs):
            client = DataClient(SECRET, addrs)
            up = client.open_upload(os.urandom(16))
            with pytest.raises(RuntimeError, match="worker thread"):
                up.send_chunk(*chunk(b"x"))
            up.abort()
            await client.close()

    run(main())


def test_uvloop_push_and_fetch(tmp_path):
    uvloop = pytest.importorskip("uvloop")
    chunks = [chunk(os.urandom(MIB)) for _ in range(4)]
    txn = os.urandom(16)

    async def main():
        async with peer_nodes(tmp_path) as (engines, addrs):
            client = DataClient(SECRET, addrs)
            up = client.open_upload(txn)
            await send_all(up, chunks)
            assert len(await up.wait_quorum(2, timeout=5)) == 2
            up.close()
            commit(engines[0], 2, txn, "k", chunks)
            assert await client.fetch_chunk(chunks[2][0], peers=["p1", "p0"]) == chunks[2][1]
            await client.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 20))
