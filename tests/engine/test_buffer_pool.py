"""Buffer pool: budget, CLOCK eviction, pinning, partial pages, counters."""

import os

import pytest

from engine import Engine
from engine.buffer_pool import BufferPool
from engine_testkit import Writer, read_all


def pool_over(data: bytes, pages: int, page_size: int = 16):
    reads = []

    def read(seg, off, n):
        reads.append((seg, off, n))
        return data[off: off + n]

    return BufferPool(read, page_size=page_size, budget=pages * page_size), reads


def test_hits_misses_and_the_budget():
    data = bytes(range(256)) * 4
    pool, reads = pool_over(data, pages=4)
    for page_no in range(4):
        pool.unpin(pool.pin(0, page_no))
    assert pool.misses == 4 and pool.hits == 0
    pool.unpin(pool.pin(0, 2))
    assert pool.hits == 1 and len(reads) == 4
    for page_no in range(4, 12):
        pool.unpin(pool.pin(0, page_no))
    assert pool.evictions == 8
    assert len(pool._table) == 4 and pool.resident_bytes == 4 * 16


def test_clock_gives_recently_used_pages_a_second_chance():
    pool, _ = pool_over(bytes(1024), pages=3)
    for p in (0, 1, 2):
        pool.unpin(pool.pin(0, p))
    pool.unpin(pool.pin(0, 3))  # sweeps all reference bits, evicts page 0
    assert (0, 0) not in pool._table
    pool.unpin(pool.pin(0, 1))  # page 1 used again: its bit is set
    pool.unpin(pool.pin(0, 4))  # page 2 (bit clear) goes, page 1 survives
    assert (0, 1) in pool._table and (0, 2) not in pool._table


def test_pinned_pages_are_never_evicted_and_a_full_pool_reads_through():
    pool, _ = pool_over(bytes(1024), pages=2)
    a, b = pool.pin(0, 0), pool.pin(0, 1)
    c = pool.pin(0, 2)  # every frame pinned: served, but not cached
    assert c.frame == -1 and pool.read_through == 1
    assert (0, 0) in pool._table and (0, 1) in pool._table
    pool.unpin(c)
    pool.unpin(a)
    pool.unpin(pool.pin(0, 3))
    assert (0, 1) in pool._table and (0, 0) not in pool._table  # only the unpinned one went
    pool.unpin(b)
    with pytest.raises(RuntimeError):
        pool.unpin(b)


def test_a_partial_page_is_not_cached_because_the_segment_may_grow():
    data = bytearray(b"x" * 20)
    pool, reads = pool_over(data, pages=4)
    page = pool.pin(0, 1)
    assert len(page.data) == 4 and page.frame == -1
    pool.unpin(page)
    data.extend(b"y" * 30)
    page = pool.pin(0, 1)
    assert len(page.data) == 16
    pool.unpin(page)


def test_read_streams_pieces_and_unpins_as_it_goes():
    data = os.urandom(200)
    pool, _ = pool_over(data, pages=4)
    it = pool.read(0, 5, 100)
    first = next(it)
    assert bytes(first) == data[5:16]
    assert sum(p.pins for p in pool._table.values()) == 1  # the page being consumed
    rest = b"".join(bytes(p) for p in it)
    assert bytes(first) + rest == data[5:105]
    assert all(p.pins == 0 for p in pool._table.values())


def test_engine_reads_small_chunks_through_the_pool(data_dir):
    eng = Engine(data_dir, maintenance_interval_s=0, pool_budget=1 << 20, page_size=4096)
    w = Writer(eng)
    w.bucket()
    objs = {f"k{i}": os.urandom(3000) for i in range(50)}
    for k, v in objs.items():
        w.put("b", k, v)
    for k, v in objs.items():
        assert read_all(eng, "b", k) == v
    misses = eng.pool.misses
    for k, v in objs.items():
        assert read_all(eng, "b", k) == v
    stats = eng.stats()["buffer_pool"]
    # second pass from the pool, but for the active segment's partial last page
    assert stats["misses"] - misses <= stats["read_through"] and stats["hits"] >= 49
    assert stats["resident_bytes"] <= 1 << 20
    eng.close()
