"""Rebuilding a store from cold storage alone: every replica lost, the shard stores
left. The stores are self-describing: shard names carry their segment's LSN range and
shard headers carry k, m, the coding and the segment's length, so no catalog is
needed to find the segments.

A contiguous chain of segments from LSN 1 is replayed, entry by entry, into a new
engine: every chunk an entry references becomes a row of the new catalog, and the
`SegmentShipped` entries among them record where the chunks are, so the rows turn
COLD as in any replica. Segments past the last recorded HWM get a `SegmentShipped` of
their own, applied after the replayed log. The result is the store as of the last LSN
in cold storage, every object readable from the shards, ready to serve.

A shipped catalog checkpoint shortens this: the newest one the chain reaches is
adopted as the new catalog (engine/catalog_adoption.py) and only the segments after
its LSN are replayed. It is also the only way past compacted segments (their entries
are gone, only their live chunks are left): a rebuild that would need a compacted
segment's entries starts from a checkpoint at or after it, or is refused.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

import lmdb
import msgpack

from engine import Engine, EngineConfig, EngineError
from engine.catalog_adoption import adopt_catalog
from engine.entries import SegmentShipped, decode_entry, entry_time_ms

from . import catalog_checkpoint
from .cold_reader import segment_reader
from .erasure import HEADER as SHARD_HEADER
from .erasure import ShardHeader
from .shard_store import ShardStore, ShardStoreError

log = logging.getLogger(__name__)


class RebuildImpossible(Exception):
    pass


@dataclass
class RebuildReport:
    segments: int = 0
    entries: int = 0
    first_lsn: int = 0
    last_lsn: int = 0
    checkpoint_lsn: int = 0  # the catalog checkpoint started from (0: the log from LSN 1)
    resumed_from_lsn: int = 0  # an interrupted replay went on after this LSN
    hwm_recorded: int = 0  # the HWM the replayed SegmentShipped entries reached
    segments_recorded_now: int = 0  # past it: recorded by the rebuild
    objects: int = 0
    cold_chunks: int = 0
    segment_bytes: int = 0
    duration_s: float = 0.0
    orphans_ignored: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _shards(stores: list[ShardStore], kind: str) -> dict[str, dict[int, tuple]]:
    """`kind/<id>/shard-<i>` in every store: id -> {i: (store index, name)}."""
    found: dict[str, dict] = {}
    for si, store in enumerate(stores):
        try:
            names = list(store.list(kind + "/"))
        except ShardStoreError as exc:  # a lost drive: the others may hold k shards
            log.warning("cold storage: %s", exc)
            continue
        for name in names:
            parts = name.split("/")
            if len(parts) == 3 and parts[2].startswith("shard-") and parts[2][6:].isdigit():
                found.setdefault(parts[1], {})[int(parts[2][6:])] = (si, name)
    return found


def discover(stores: list[ShardStore]) -> dict[str, dict]:
    """Every segment in the stores: id -> {first, last, compacted, shards {i: (store, name)}}."""
    found = {}
    for seg_id, shards in _shards(stores, "segments").items():
        try:
            lo, hi, *rest = seg_id.split("-")
            found[seg_id] = {"id": seg_id, "first": int(lo, 16), "last": int(hi, 16),
                             "compacted": bool(rest), "shards": shards}
        except ValueError:
            continue  # not a segment name
    return found


def discover_checkpoints(stores: list[ShardStore]) -> list[dict]:
    """Every catalog checkpoint in the stores, oldest first: {id, lsn, shards}."""
    found = []
    for ck_id, shards in _shards(stores, "checkpoints").items():
        try:
            found.append({"id": ck_id, "lsn": int(ck_id, 16), "shards": shards})
        except ValueError:
            continue
    return sorted(found, key=lambda c: c["lsn"])


def _locations(seg: dict, stores: list[ShardStore], kind: str = "segments") -> dict:
    """The segment's (or checkpoint's) locations, read from the first shard header
    that answers."""
    for si, name in seg["shards"].values():
        try:
            header = ShardHeader.unpack(stores[si].read_range(name, 0, SHARD_HEADER.size))
            break
        except Exception:  # noqa: BLE001 - another shard may answer
            continue
    else:
        raise RebuildImpossible(f"{kind[:-1]} {seg['id']}: no readable shard header")
    shards = []
    for i in range(header.k + header.m):
        si, name = seg["shards"].get(i, (i % len(stores), f"{kind}/{seg['id']}/shard-{i:02d}"))
        shards.append([si, name, None, None])  # size and SHA-256 unknown: not recorded
    return {"id": seg["id"], "format": 1, "size": header.segment_length, "k": header.k,
            "m": header.m, "ec_type": header.ec_type, "stripe_size": header.stripe_size,
            "shards": shards, "rebuilt": True}


def chain(found: dict[str, dict]) -> tuple[list[dict], list[str]]:
    """Segments covering 1..top without a gap, reaching the highest top possible; the
    rest. The stores may hold more than one chain: an orphan (a shipment whose entry
    never committed) overlaps what a later leader shipped over other boundaries, and a
    compacted segment overlaps the ones it replaced until they are deleted. Taking the
    widest segment at each step could walk into an orphan whose end no other segment
    continues from; so every path is followed (segments in order of first LSN: all
    paths into a segment's start are known when it is reached) and the one to the
    farthest LSN is kept. Among paths to the same LSN: fewer compacted segments (their
    entries are gone), then fewer missing shards (a half-written orphan may have fewer
    than k)."""
    segs = sorted(found.values(), key=lambda s: (s["first"], s["last"]))
    most = max((len(s["shards"]) for s in segs), default=0)
    # next LSN -> (compacted, missing shards, the last segment of the path, its start)
    best: dict[int, tuple] = {1: (0, 0, None, None)}
    for seg in segs:
        here = best.get(seg["first"])
        if here is None:
            continue
        cand = (here[0] + seg["compacted"], here[1] + most - len(seg["shards"]), seg, seg["first"])
        nxt = seg["last"] + 1
        if nxt not in best or cand[:2] < best[nxt][:2]:
            best[nxt] = cand
    out, at = [], max(best)
    while best[at][2] is not None:  # walk the path back from its end
        out.append(best[at][2])
        at = best[at][3]
    out.reverse()
    used = {s["id"] for s in out}
    return out, sorted(i for i in found if i not in used)


def usable_checkpoints(segs: list[dict], checkpoints: list[dict],
                       upto_lsn: int | None = None) -> list[dict]:
    """Checkpoints a replay of the chain `segs` may start from, newest first: within
    the chain (and at or below `upto_lsn`), with no compacted segment after them (a
    compacted segment's entries are gone; only a start past it avoids them), and with
    at least one shard per data fragment listed."""
    if not segs:
        return []
    top = segs[-1]["last"] if upto_lsn is None else min(upto_lsn, segs[-1]["last"])
    past_compacted = max((s["last"] for s in segs if s["compacted"]), default=0)
    return [c for c in reversed(checkpoints) if past_compacted <= c["lsn"] <= top]


def replay(stores: list[ShardStore], engine_dir: str, progress=None, *,
           upto_lsn: int | None = None, upto_ms: int | None = None,
           checkpoint: dict | None = None,
           engine_config: dict | None = None) -> tuple[RebuildReport, Engine, list[dict]]:
    """Replay cold storage into the engine at `engine_dir`: from `checkpoint` (adopted
    first, if the directory is new) or from LSN 1, up to the chain's end, `upto_lsn`
    or `upto_ms`. An engine already there (an interrupted replay) is resumed after its
    applied LSN. Returns the report, the open engine (the caller closes it) and the
    chain of segments read (each replayed one with its "loc")."""
    t0 = time.perf_counter()
    report = RebuildReport()
    segs, others = chain(discover(stores))
    if not segs:
        raise RebuildImpossible("no segment starting at LSN 1 in the shard stores")
    if upto_lsn is not None:
        if upto_lsn > segs[-1]["last"]:
            raise RebuildImpossible(f"LSN {upto_lsn} is not in cold storage yet (it holds "
                                    f"1..{segs[-1]['last']})")
        segs = [s for s in segs if s["first"] <= upto_lsn]
    report.orphans_ignored = others
    fresh = not os.path.exists(os.path.join(engine_dir, "catalog", "data.mdb"))
    if fresh and checkpoint is not None:
        loc = _locations(checkpoint, stores, kind="checkpoints")
        loc["lsn"] = checkpoint["lsn"]
        try:
            catalog_checkpoint.restore(loc, stores, os.path.join(engine_dir, "catalog"))
        except Exception as exc:  # noqa: BLE001 - too many shards lost, or damaged
            raise RebuildImpossible(f"checkpoint {checkpoint['id']} cannot be read: {exc}") from exc
        adopt_catalog(os.path.join(engine_dir, "catalog"))
    engine = Engine(EngineConfig(**{**(engine_config or {}), "data_dir": engine_dir,
                                    "maintenance_interval_s": 0, "ship_retention": True}))
    try:
        start = engine.applied_lsn
        if fresh:
            report.checkpoint_lsn = start
        else:
            report.resumed_from_lsn = start
        compacted = [s["id"] for s in segs if s["compacted"] and s["last"] > start]
        if compacted:
            raise RebuildImpossible(
                f"segments {', '.join(compacted[:3])} were compacted (their entries are gone) "
                "and no catalog checkpoint at or after them can be used")
        pending, stopped = None, False
        report.first_lsn = start + 1
        for n, seg in enumerate(segs):
            if stopped:
                break
            report.segments += 1
            if seg["last"] <= start:
                continue  # in the checkpoint, or replayed before an interruption
            loc = _locations(seg, stores)
            try:
                reader = segment_reader(loc, stores)
                for lsn, raw in reader.entries():
                    if lsn <= start:
                        continue
                    entry = decode_entry(raw)
                    at = entry_time_ms(entry)
                    if (upto_lsn is not None and lsn > upto_lsn) or (
                            upto_ms is not None and at is not None and at > upto_ms):
                        stopped = True
                        break
                    pending = engine.submit(lsn, entry)  # group-committed
                    report.entries += 1
                    report.last_lsn = lsn
            except (RebuildImpossible, EngineError):
                raise
            except Exception as exc:  # noqa: BLE001 - too many shards lost, or damaged
                raise RebuildImpossible(f"segment {seg['id']} cannot be read: {exc}") from exc
            seg["loc"] = loc
            report.segment_bytes += loc["size"]
            if progress:
                progress(n + 1, len(segs), report)
        if pending is not None:
            pending.wait()  # published in log order: everything before it is too
        report.hwm_recorded = engine.cold_hwm
        report.last_lsn = max(report.last_lsn, engine.applied_lsn)
    except BaseException:
        engine.close()
        raise
    report.duration_s = round(time.perf_counter() - t0, 3)
    return report, engine, segs[:report.segments]


def _checkpoint_time(checkpoint: dict, stores: list[ShardStore], scratch: str) -> int | None:
    """The time of the last timed entry a checkpoint's catalog applied (its `time_ms`),
    None if it does not say (a checkpoint from before it was kept)."""
    loc = _locations(checkpoint, stores, kind="checkpoints")
    loc["lsn"] = checkpoint["lsn"]
    os.makedirs(scratch, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".checkpoint-") as tmp:
        try:
            catalog_checkpoint.restore(loc, stores, tmp)
        except Exception as exc:  # noqa: BLE001 - too many shards lost, or damaged
            raise RebuildImpossible(f"checkpoint {checkpoint['id']} cannot be read: {exc}") from exc
        env = lmdb.open(tmp, readonly=True, lock=False, max_dbs=16)
        try:
            db = env.open_db(b"meta", create=False)
            with env.begin(buffers=False) as txn:
                value = txn.get(b"time_ms", db=db)
        finally:
            env.close()
    return msgpack.unpackb(value) if value is not None else None


def _not_after_time(stores, segs, usable: list[dict], upto_ms: int, scratch: str) -> list[dict]:
    """The usable checkpoints (newest first) whose state is not after `upto_ms`. Times
    grow with LSNs, so the newest such one is found by bisection (a few catalogs
    fetched, not all)."""
    asc = list(reversed(usable))

    def ok(c) -> bool:
        at = _checkpoint_time(c, stores, scratch)
        return at <= upto_ms if at is not None else _not_after(stores, segs, c["lsn"], upto_ms)
    lo, hi = 0, len(asc)  # asc[:lo] known ok, asc[hi:] known not ok
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(asc[mid]):
            lo = mid + 1
        else:
            hi = mid
    return list(reversed(asc[:lo]))


def _not_after(stores: list[ShardStore], segs: list[dict], lsn: int, upto_ms: int) -> bool:
    """Whether the state after `lsn` is not after `upto_ms`: the last entry up to `lsn`
    that carries a time was proposed at or before `upto_ms`. Read backwards from the
    segment holding `lsn`; a compacted one (its entries gone) cannot tell: False."""
    for seg in reversed([s for s in segs if s["first"] <= lsn]):
        if seg["compacted"]:
            return False
        last_at = None
        try:
            for entry_lsn, raw in segment_reader(_locations(seg, stores), stores).entries():
                if entry_lsn > lsn:
                    break
                at = entry_time_ms(decode_entry(raw))
                if at is not None:
                    last_at = at
        except RebuildImpossible:
            raise
        except Exception as exc:  # noqa: BLE001 - too many shards lost, or damaged
            raise RebuildImpossible(f"segment {seg['id']} cannot be read: {exc}") from exc
        if last_at is not None:
            return last_at <= upto_ms
    return True


def rebuild(stores: list[ShardStore], engine_dir: str, progress=None, *,
            upto_lsn: int | None = None, upto_ms: int | None = None) -> RebuildReport:
    """The store as of the last LSN in cold storage, or as of `upto_lsn` (the entries
    up to it), or as of `upto_ms` (every entry proposed at or before that wall-clock
    time; an entry that gives no time goes with the one before it). Starts from the
    newest usable catalog checkpoint: for a time, the newest whose last entry was
    proposed at or before it (so the checkpoint's state is not after the time);
    without one, from LSN 1, or refused if compaction dropped that history."""
    t0 = time.perf_counter()
    segs, _ = chain(discover(stores))
    checkpoint = None
    if segs:
        usable = usable_checkpoints(segs, discover_checkpoints(stores), upto_lsn)
        if upto_ms is not None:
            usable = _not_after_time(stores, segs, usable, upto_ms, os.path.dirname(engine_dir))
            if not usable and any(s["compacted"] for s in segs):
                raise RebuildImpossible(
                    "that time is older than the history cold storage still holds (compacted "
                    "segments and no catalog checkpoint before the time)")
        if usable:
            checkpoint = usable[0]
    report, engine, read = replay(stores, engine_dir, progress, upto_lsn=upto_lsn,
                                  upto_ms=upto_ms, checkpoint=checkpoint)
    try:
        last = read[-1]["last"] if read else engine.applied_lsn
        lsn = max(engine.applied_lsn, last)
        for seg in read:  # past the recorded HWM (a checkpoint's skipped ones too): record them now
            if seg["last"] <= engine.cold_hwm:
                continue
            lsn += 1
            loc = seg.get("loc") or _locations(seg, stores)
            result = engine.apply(lsn, SegmentShipped(seg["first"], seg["last"], loc))
            if result.error:
                raise RebuildImpossible(f"segment {seg['id']}: {result.error}")
            report.segments_recorded_now += 1
        stats = engine.stats()
        if upto_lsn is None and upto_ms is None:
            report.last_lsn = max(report.last_lsn, last)
        report.cold_chunks = stats.get("cold_chunks", 0)
        with engine.catalog.read() as t:
            report.objects = t.count("objects")
        if stats.get("missing_chunks"):
            raise RebuildImpossible(f"{stats['missing_chunks']} chunks are referenced but in no segment")
    finally:
        engine.close()
    report.duration_s = round(time.perf_counter() - t0, 3)
    return report
