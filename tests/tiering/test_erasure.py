"""Erasure-coded shards: ranged reads from any k shards, damage detection, heal,
and memory that stays flat as segments grow."""

import gc
import hashlib
import io
import itertools
import os
import random
import shutil
import tracemalloc

import pytest

from tiering.erasure import HEADER, ErasureCode, NotEnoughShards, ShardHeader

MiB = 1 << 20
CODES = [
    pytest.param((4, 2, "liberasurecode_rs_vand", MiB), id="k4m2-liberasurecode"),
    pytest.param((2, 1, "liberasurecode_rs_vand", 300_000), id="k2m1-liberasurecode"),
    pytest.param((4, 2, "isa_l_rs_vand", MiB), id="k4m2-isal"),
]


class Shards:
    """Shard files in a directory, served through a counting ``fetch``."""

    def __init__(self, directory, n):
        self.paths = [directory / f"shard{i}" for i in range(n)]
        self.calls = []

    def fetch(self, shard, offset, n):
        self.calls.append((shard, offset, n))
        path = self.paths[shard]
        if not path.exists():
            return None
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)

    def copy_to(self, directory):
        copy = Shards(directory, len(self.paths))
        for src, dst in zip(self.paths, copy.paths):
            shutil.copyfile(src, dst)
        return copy

    def flip_byte(self, shard, offset):
        with open(self.paths[shard], "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x55]))


@pytest.fixture(scope="module", params=CODES)
def encoded(request, tmp_path_factory):
    k, m, ec_type, stripe = request.param
    code = ErasureCode(k, m, ec_type, stripe_size=stripe)
    directory = tmp_path_factory.mktemp("shards")
    segment = random.Random(k * 10 + m).randbytes(10 * MiB + 12345)
    (directory / "segment").write_bytes(segment)
    shards = Shards(directory, k + m)
    sinks = [open(path, "wb") for path in shards.paths]
    infos = code.encode(directory / "segment", sinks)
    for sink in sinks:
        sink.close()
    return code, segment, shards, infos


def ranges(segment_length, stripe, seed=0):
    rng = random.Random(seed)
    fixed = [(0, 1), (segment_length - 1, 1), (0, segment_length)]
    fixed += [(stripe - 10, 20), (stripe, stripe), (0, stripe + 1)]  # across stripe boundaries
    return fixed + [
        (offset, rng.randint(1, min(2 * stripe, segment_length - offset)))
        for offset in (rng.randrange(segment_length) for _ in range(10))
    ]


def test_encode_shard_info(encoded):
    code, segment, shards, infos = encoded
    assert [info.index for info in infos] == list(range(code.k + code.m))
    for info, path in zip(infos, shards.paths):
        data = path.read_bytes()
        assert info.size == len(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        header = ShardHeader.unpack(data[: HEADER.size])
        assert header.index == info.index and header.segment_length == len(segment)
        assert header.shard_size == len(data)
        assert len(info.fragment_crcs) == header.stripe_count
        assert header.stripe_count == -(-len(segment) // code.stripe_size)


def test_read_range_all_shards(encoded):
    code, segment, shards, _ = encoded
    for offset, length in ranges(len(segment), code.stripe_size):
        assert code.read_range(shards.fetch, offset, length) == segment[offset : offset + length]
    assert code.read_range(shards.fetch, 5, 0) == b""


def test_read_range_any_m_shards_missing(encoded):
    code, segment, shards, _ = encoded
    n = code.k + code.m
    losses = (itertools.combinations(range(n), r) for r in range(1, code.m + 1))
    for lost in itertools.chain.from_iterable(losses):

        def fetch(shard, offset, length):
            return None if shard in lost else shards.fetch(shard, offset, length)

        for offset, length in ranges(len(segment), code.stripe_size, seed=len(lost)):
            assert code.read_range(fetch, offset, length) == segment[offset : offset + length], lost


def test_corrupt_fragment_is_replaced_by_parity(encoded, tmp_path):
    code, segment, shards, _ = encoded
    shards = shards.copy_to(tmp_path)
    header = ShardHeader.unpack(shards.paths[1].read_bytes()[: HEADER.size])
    offset, _ = header.span(3, 3)
    shards.flip_byte(1, offset + 500)
    start = 3 * code.stripe_size - 7
    end = start + code.stripe_size
    assert code.read_range(shards.fetch, start, end - start) == segment[start:end]
    assert code.k in {shard for shard, _, _ in shards.calls}  # a parity shard filled in
    reports = [code.verify_shard(_read_at(path), path.stat().st_size) for path in shards.paths]
    assert [r.bad_stripes for r in reports] == [[3] if i == 1 else [] for i in range(len(reports))]
    assert not reports[1].ok and "stripe 3" in reports[1].problems[0]


def test_m_plus_one_shards_lost(encoded):
    code, segment, shards, _ = encoded
    lost = set(range(1, code.m + 2))

    def fetch(shard, offset, length):
        return None if shard in lost else shards.fetch(shard, offset, length)

    with pytest.raises(NotEnoughShards) as caught:
        code.read_range(fetch, 2 * code.stripe_size + 1, 10)
    assert caught.value.stripe == 2
    assert {i for i, why in caught.value.tried.items() if why == "unavailable"} == lost
    assert "stripe 2" in str(caught.value) and "shard 1: unavailable" in str(caught.value)
    with pytest.raises(NotEnoughShards):
        code.decode(fetch, io.BytesIO())


def test_m_lost_plus_one_crc_failure(encoded, tmp_path):
    code, segment, shards, _ = encoded
    shards = shards.copy_to(tmp_path)
    header = ShardHeader.unpack(shards.paths[0].read_bytes()[: HEADER.size])
    shards.flip_byte(0, header.span(1, 1)[0] + 100)
    for path in shards.paths[code.k :]:
        path.unlink()
    assert code.read_range(shards.fetch, 0, 10) == segment[:10]  # stripe 0 is intact
    with pytest.raises(NotEnoughShards, match="stripe 1: .*shard 0: fragment CRC32C mismatch"):
        code.read_range(shards.fetch, 0, code.stripe_size + 10)


@pytest.mark.parametrize("bad", ["raise", "short"])
def test_failing_fetch_is_unavailable(encoded, bad):
    code, segment, shards, _ = encoded

    def fetch(shard, offset, length):
        data = shards.fetch(shard, offset, length)
        if shard == 0 and bad == "raise":
            raise OSError("disk gone")
        return data[:-1] if shard == 0 and offset > 0 else data

    assert code.read_range(fetch, 10, 1000) == segment[10:1010]


def test_available_restricts_shards(encoded):
    code, segment, shards, _ = encoded
    available = list(range(code.m, code.k + code.m))
    shards.calls.clear()
    assert code.read_range(shards.fetch, 0, 4096, available=available) == segment[:4096]
    assert {shard for shard, _, _ in shards.calls} == set(available)
    with pytest.raises(ValueError):
        code.read_range(shards.fetch, 0, 1, available=[99])


def test_small_range_fetches_only_needed_fragments(encoded):
    code, segment, shards, _ = encoded
    header = ShardHeader.unpack(shards.paths[0].read_bytes()[: HEADER.size])
    shards.calls.clear()
    offset = 5 * code.stripe_size + 1000
    assert code.read_range(shards.fetch, offset, 50) == segment[offset : offset + 50]
    headers = [(i, 0, HEADER.size) for i in range(code.k)]
    fragments = [(i, *header.span(5, 5)) for i in range(code.k)]
    assert sorted(shards.calls) == sorted(headers + fragments)
    fetched = sum(n for _, _, n in shards.calls)
    assert fetched < code.k * (HEADER.size + code.stripe_size // code.k + 200)


def test_decode_whole(encoded):
    code, segment, shards, _ = encoded
    out = io.BytesIO()
    assert code.decode(shards.fetch, out) == hashlib.sha256(segment).hexdigest()
    assert out.getvalue() == segment
    out = io.BytesIO()
    code.decode(shards.fetch, out, available=list(range(code.m, code.k + code.m)))
    assert out.getvalue() == segment


def test_reconstruct_shard_is_byte_identical(encoded, tmp_path):
    code, segment, shards, infos = encoded
    for index in range(code.k + code.m):
        lost = {index, (index + 1) % (code.k + code.m)} if code.m > 1 else {index}

        def fetch(shard, offset, length):
            return None if shard in lost else shards.fetch(shard, offset, length)

        out = io.BytesIO()
        info = code.reconstruct_shard(fetch, index, out)
        assert out.getvalue() == shards.paths[index].read_bytes()
        assert info == infos[index]


def test_verify_shard(encoded, tmp_path):
    code, segment, shards, infos = encoded
    shards = shards.copy_to(tmp_path)
    path = shards.paths[2]
    report = code.verify_shard(_read_at(path), path.stat().st_size)
    assert report.ok and report.index == 2 and report.sha256 == infos[2].sha256
    with open(path, "r+b") as f:
        f.truncate(infos[2].size - 1000)
    report = code.verify_shard(_read_at(path), path.stat().st_size)
    assert not report.ok and any("truncated" in p for p in report.problems)
    shards.flip_byte(2, 20)
    report = code.verify_shard(_read_at(path), path.stat().st_size)
    assert report.index is None and "checksum" in report.problems[0]


def test_swapped_shard_is_rejected(encoded, tmp_path):
    code, segment, shards, _ = encoded
    shards = shards.copy_to(tmp_path)
    shutil.copyfile(shards.paths[0], shards.paths[1])
    assert code.read_range(shards.fetch, 0, 100) == segment[:100]
    for path in shards.paths[code.k :]:
        path.unlink()
    with pytest.raises(NotEnoughShards, match="shard 1: header names shard 0"):
        code.read_range(shards.fetch, 0, 100)


def test_wrong_parameters_are_reported(encoded):
    code, segment, shards, _ = encoded
    other = ErasureCode(code.k + 1, code.m, code.ec_type)
    with pytest.raises(NotEnoughShards, match=f"no readable shard header.*k={code.k}"):
        other.read_range(shards.fetch, 0, 1)


def test_empty_and_tiny_segments():
    code = ErasureCode(4, 2)
    for segment in (b"", b"x", os.urandom(5000)):
        sinks = [io.BytesIO() for _ in range(6)]
        code.encode(io.BytesIO(segment), sinks)

        def fetch(shard, offset, n):
            return sinks[shard].getvalue()[offset : offset + n]

        out = io.BytesIO()
        code.decode(fetch, out)
        assert out.getvalue() == segment
        if segment:
            assert code.read_range(fetch, len(segment) - 1, 1) == segment[-1:]
    with pytest.raises(ValueError):
        code.read_range(fetch, 4990, 11)


def test_bad_parameters():
    with pytest.raises(ValueError, match="ec_type"):
        ErasureCode(4, 2, "jerasure_rs_vand")
    with pytest.raises(ValueError):
        ErasureCode(4, 0)
    with pytest.raises(ValueError, match="sinks"):
        ErasureCode(2, 1).encode(io.BytesIO(b"abc"), [io.BytesIO()])


def test_memory_stays_flat_for_64_mib(tmp_path):
    code = ErasureCode(4, 2)
    source = tmp_path / "segment"
    with open(source, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    shards = Shards(tmp_path, 6)
    gc.collect()
    tracemalloc.start()
    try:
        sinks = [open(path, "wb") for path in shards.paths]
        code.encode(source, sinks)
        for sink in sinks:
            sink.close()
        _, encode_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with open(tmp_path / "decoded", "wb") as out:
            digest = code.decode(shards.fetch, out, available=[0, 2, 3, 4, 5])
        _, decode_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert encode_peak < 4 * MiB, encode_peak
    assert decode_peak < 4 * MiB, decode_peak
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()


def _read_at(path):
    def read_at(offset, n):
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)

    return read_at
