"""Listing against a sorted model: prefix, delimiter, start-after, page sizes, UTF-8
byte order, and that a page costs cursor steps proportional to its size."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine
from engine import entries as E
from engine.catalog import Catalog, CatalogTxn
from listing_model import s3_listing
from engine.listing import list_objects

KEYS = [
    "a", "a/", "a/b", "a/b/c", "a/c", "a%", "a+b", "a b", "ab", "b/x/y", "b/x/z", "b//d",
    "../up", "./here", "é", "e", "z", "ζ", "日本/語", "😀", "a/😀", "photos/2024/01.jpg",
    "photos/2024/02.jpg", "photos/2025/01.jpg", "photos/readme", "x" * 300,
]


def model_list(keys, prefix="", delimiter="", start_after="", max_keys=1000):
    items = s3_listing(keys, prefix, delimiter, start_after)
    return items[:max_keys], len(items) > max_keys


def engine_list(cat, keys_bucket, **kw):
    with cat.read() as t:
        page = list_objects(t, keys_bucket, **kw)
    items = sorted([("k", k) for k, _ in page.entries] + [("p", p) for p in page.common_prefixes],
                   key=lambda it: it[1].encode())
    return items, page


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    c = Catalog(str(tmp_path_factory.mktemp("cat")))
    with c.write() as t:
        for k in KEYS:
            t.put_object("b", k, {"size": 1})
        t.put_object("a", "zzz", {"size": 1})  # neighbouring buckets must not leak in
        t.put_object("c", "a", {"size": 1})
    yield c
    c.close()


@pytest.mark.parametrize("prefix", ["", "a", "a/", "photos/", "photos/2024", "b/x/", "日", "nomatch"])
@pytest.mark.parametrize("delimiter", ["", "/", "b", "//", "/2"])
def test_every_prefix_delimiter_combination_pages_like_the_model(cat, prefix, delimiter):
    for max_keys in (1, 2, 3, 1000):
        marker = ""
        pages = 0
        collected = []
        while True:
            items, page = engine_list(cat, "b", prefix=prefix, delimiter=delimiter,
                                      start_after=marker, max_keys=max_keys)
            want, truncated = model_list(KEYS, prefix, delimiter, marker, max_keys)
            assert items == want, (prefix, delimiter, marker, max_keys)
            assert page.is_truncated == truncated
            collected += items
            pages += 1
            if not page.is_truncated:
                break
            marker = page.next_marker
            assert pages < 100
        full, _ = model_list(KEYS, prefix, delimiter, "", 10**6)
        assert collected == full


def test_start_after_inside_a_common_prefix_skips_it(cat):
    items, _ = engine_list(cat, "b", delimiter="/", start_after="a/b")
    assert ("p", "a/") not in items and items[0] == ("k", "ab")  # "a%" < "a/b" in byte order


@settings(max_examples=60, deadline=None)
@given(keys=st.sets(st.text(alphabet="ab/é😀.", min_size=1, max_size=6), min_size=1, max_size=40),
       prefix=st.text(alphabet="ab/", max_size=2), delimiter=st.sampled_from(["", "/", "b", "é"]),
       max_keys=st.integers(1, 7), data=st.data())
def test_listing_matches_the_model_for_random_keys(tmp_path_factory, keys, prefix, delimiter, max_keys, data):
    c = Catalog(str(tmp_path_factory.mktemp("rand")))
    try:
        with c.write() as t:
            for k in keys:
                t.put_object("bk", k, {"size": 1})
        start_after = data.draw(st.sampled_from(["", *sorted(keys)]))
        items, page = engine_list(c, "bk", prefix=prefix, delimiter=delimiter,
                                  start_after=start_after, max_keys=max_keys)
        want, truncated = model_list(keys, prefix, delimiter, start_after, max_keys)
        assert items == want and page.is_truncated == truncated
    finally:
        c.close()


def test_a_page_does_not_scan_the_bucket(tmp_path):
    """10,000 keys under one common prefix cost one seek, not 10,000 steps."""
    c = Catalog(str(tmp_path / "cat"))
    with c.write() as t:
        for i in range(10000):
            t.put_object("b", f"dir/{i:05d}", {"size": 1})
        t.put_object("b", "end", {"size": 1})
    steps = {"n": 0}

    class CountingCursor:
        def __init__(self, cur):
            self.cur = cur

        def set_range(self, k):
            steps["n"] += 1
            return self.cur.set_range(k)

        def next(self):
            steps["n"] += 1
            return self.cur.next()

        def key(self):
            return self.cur.key()

        def value(self):
            return self.cur.value()

    class CountingTxn(CatalogTxn):
        __slots__ = ()

        def cursor(self, table):  # the real LMDB cursor, with its steps counted
            return CountingCursor(super().cursor(table))

    with c.read() as plain:
        t = CountingTxn(c, plain.txn)
        page = list_objects(t, "b", delimiter="/", max_keys=1000)
        assert page.common_prefixes == ["dir/"] and [k for k, _ in page.entries] == ["end"]
        assert steps["n"] <= 4
        steps["n"] = 0
        page = list_objects(t, "b", prefix="dir/", start_after="dir/05000", max_keys=10)
        assert [k for k, _ in page.entries][0] == "dir/05001" and steps["n"] <= 12
    c.close()


def test_engine_listing_of_objects_written_through_the_log(data_dir):
    from engine_testkit import Writer

    eng = Engine(data_dir, maintenance_interval_s=0)
    w = Writer(eng)
    w.bucket("b")
    rng = random.Random(7)
    keys = rng.sample(KEYS, 12)
    for k in keys:
        w.put("b", k, k.encode())
    page = eng.list_objects("b", max_keys=1000)
    assert [k for k, _ in page.entries] == sorted(keys, key=str.encode)
    uploads = []
    for i, k in enumerate(["x/1", "x/2", "y"]):
        w.apply(E.CreateMultipartUpload("b", k, f"u{i}", 1))
        uploads.append((k, f"u{i}"))
    up = eng.list_uploads("b", max_uploads=2)
    assert [(k, u) for k, u, _ in up.uploads] == uploads[:2] and up.is_truncated
    up2 = eng.list_uploads("b", key_marker=up.next_key_marker, upload_id_marker=up.next_upload_id_marker)
    assert [(k, u) for k, u, _ in up2.uploads] == uploads[2:]
    assert eng.list_uploads("b", delimiter="/").common_prefixes == ["x/"]
    eng.close()


LONG = "p/" * 185 + "q"  # 371 bytes: keys built on it straddle the 380-byte boundary


@settings(max_examples=150, deadline=None)
@given(tails=st.sets(st.text(alphabet="ab/é", min_size=0, max_size=40), min_size=1, max_size=30),
       shorts=st.sets(st.text(alphabet="pq/a", min_size=1, max_size=5), max_size=5),
       prefix_len=st.sampled_from([0, 2, 371, 375, 381, 390]),
       delimiter=st.sampled_from(["", "/", "b", "é"]), max_keys=st.integers(1, 6), data=st.data())
def test_long_keys_list_in_exact_byte_order(tmp_path_factory, tails, shorts, prefix_len, delimiter,
                                            max_keys, data):
    """Keys over 380 bytes live in long-key groups (catalog.py); listing them must
    still match the model exactly, across pages, markers and delimiters."""
    keys = {LONG + t for t in tails} | shorts
    c = Catalog(str(tmp_path_factory.mktemp("long")))
    try:
        with c.write() as t:
            for k in keys:
                t.put_object("bk", k, {"size": len(k)})
        with c.read() as t:
            for k in keys:
                assert t.object("bk", k) == {"size": len(k)}
            assert t.object("bk", LONG + "zzzz" * 10) is None
        ordered = sorted(keys, key=str.encode)
        prefix = (ordered[-1].encode()[:prefix_len]).decode(errors="ignore") if prefix_len else ""
        start_after = data.draw(st.sampled_from(["", *ordered]))
        marker, collected = start_after, []
        for _ in range(200):
            items, page = engine_list(c, "bk", prefix=prefix, delimiter=delimiter,
                                      start_after=marker, max_keys=max_keys)
            want, truncated = model_list(keys, prefix, delimiter, marker, max_keys)
            assert items == want and page.is_truncated == truncated
            collected += items
            if not page.is_truncated:
                break
            marker = page.next_marker
        assert collected == model_list(keys, prefix, delimiter, start_after, 10**6)[0]
        with c.write() as t:  # deleting empties groups away
            for k in keys:
                t.delete_object("bk", k)
        with c.read() as t:
            assert list(t.cursor("objects")) == []
    finally:
        c.close()
