"""Small helpers for engine tests: writing whole objects the way the S3 front will."""

import hashlib

from engine import entries as E

MIB = 1 << 20


class Writer:
    """Hands out increasing log LSNs, as the log layer does, and writes objects."""

    def __init__(self, engine, start_lsn=None):
        self.engine = engine
        self.lsn = engine.applied_lsn if start_lsn is None else start_lsn

    def next_lsn(self):
        self.lsn += 1
        return self.lsn

    def apply(self, entry):
        return self.engine.apply(self.next_lsn(), entry)

    def bucket(self, name="b"):
        return self.apply(E.CreateBucket(name, 1))

    def chunks(self, data, chunk_size=MIB, txn=None):
        txn = txn or self.engine.begin()
        refs = [self.engine.write_chunk(txn, data[i:i + chunk_size])
                for i in range(0, len(data), chunk_size)]
        self.engine.wait_durable()
        return txn, [(r.chunk_id, r.length) for r in refs]

    def put(self, bucket, key, data, chunk_size=MIB, meta=None):
        txn, chunks = self.chunks(data, chunk_size)
        return self.apply(E.PutObject(bucket, key, len(data), hashlib.md5(data).hexdigest(),
                                      chunks, 1000, meta or {}, txn_id=txn))


def read_all(engine, bucket, key, start=0, end=None):
    with engine.open_object(bucket, key) as r:
        return b"".join(bytes(p) for p in r.read(start, end))


def downgrade_catalog(data_dir, fmt, drop_segment_rows=()):
    """Rewrite a closed engine's catalog the way format `fmt` (1 or 2) stored it: chunk
    rows [lsn, size, refs], segment rows [live, dead], no cold tables, no wal_gone_raft
    (format 1: no `missing` table either). drop_segment_rows: segments to leave without
    a row (format 2 had none for a segment without chunk records). For upgrade tests."""
    import os

    import lmdb

    from engine.catalog import _TABLES, _U64, pack, unpack

    env = lmdb.open(os.path.join(data_dir, "catalog"), max_dbs=len(_TABLES) + 1)
    db = {name: env.open_db(name.encode()) for name in _TABLES}
    with env.begin(write=True) as txn:
        for k, v in list(txn.cursor(db=db["chunks"])):
            txn.put(k, pack(unpack(v)[:3]), db=db["chunks"])
        for k, v in list(txn.cursor(db=db["segments"])):
            if _U64.unpack(k)[0] in drop_segment_rows:
                txn.delete(k, db=db["segments"])
            else:
                txn.put(k, pack(unpack(v)[:2]), db=db["segments"])
        for table in ("cold", "cold_segments") + (("missing",) if fmt == 1 else ()):
            txn.drop(db[table], delete=False)
        txn.delete(b"wal_gone_raft", db=db["meta"])
        txn.put(b"format", pack(fmt), db=db["meta"])
    env.sync(True)
    env.close()


def check_catalog(eng):
    """The catalog's invariants: `missing` / `cold` are exactly the MISSING / COLD rows
    (size 0); every row is referenced; live bytes per segment equal the sizes of the hot
    rows located there, and dead bytes are never negative; a hot row points into a
    segment on disk whose max_raft is at least the row's intro_lsn (the cold tier finds
    the chunk there until the HWM passes it). Returns the chunk rows."""
    from engine.catalog import COLD, MISSING

    with eng.catalog.read() as t:
        rows = dict(t.chunks())
        missing = set(t.missing(1 << 30))
        cold = {bytes(k) for k in t.cursor("cold").iternext(keys=True, values=False)}
        segs = dict(t.segments())
    assert all(len(r) == 4 and r[2] > 0 for r in rows.values())
    assert missing == {c for c, r in rows.items() if r[0] == MISSING}
    assert cold == {c for c, r in rows.items() if r[0] == COLD}
    assert all(r[1] == 0 for r in rows.values() if r[0] < 0)
    live = {}
    for r in rows.values():
        if r[0] >= 0:
            seg = eng.wal.segment_of(r[0])
            assert seg in eng.wal.segments
            live[seg] = live.get(seg, 0) + r[1]
            assert segs[seg][2] >= r[3], (seg, r)
    for seg in set(live) | set(segs):
        row = segs.get(seg, [0, 0, 0])
        assert row[0] == live.get(seg, 0), seg
        assert row[1] >= 0, seg
    st = eng.stats()
    assert st["missing_chunks"] == len(missing) and st["cold_chunks"] == len(cold)
    return rows


def open_engine(data_dir, segment_size, **kw):
    """An engine for catalog-level tests: no maintenance thread, no fsync (crashes are
    simulated by the tests themselves)."""
    from engine import Engine

    kw.setdefault("maintenance_interval_s", 0)
    kw.setdefault("fsync", False)
    return Engine(data_dir, segment_size=segment_size, **kw)


def chunk_rows(eng) -> dict:
    with eng.catalog.read() as t:
        return dict(t.chunks())


def segment_rows(eng) -> dict:
    with eng.catalog.read() as t:
        return dict(t.segments())
