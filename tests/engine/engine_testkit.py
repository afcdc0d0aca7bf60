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
