"""Crash safety, proved end to end through S3: SIGKILL the server under load, restart it,
check what clients were promised.

Issue text: "a client PUTs objects while the server is killed with SIGKILL at random
moments; after restart every acknowledged PUT reads back identical, and no object that
was not acknowledged is visible half-written".

Several client threads (boto3, retries off, short timeouts) write to one bucket of a
real `tidestore serve` process: single PUTs of 0 B to 10 MiB (many of them several 4 MiB
chunks, some exactly on chunk boundaries), multipart uploads, overwrites and deletes.
Every version's bytes are a deterministic function of (key, generation) and start with
"key|generation|", so any visible object can be identified, or shown to be none of them.

Each thread owns its keys and works on them one request at a time, so the model is
exact: per key, the state the last acknowledged request left (an object generation, or
absent) and at most one request in flight when the server died. After SIGKILL at a
random moment (0.2 to 1.5 s into the round) and a restart on the same data directory:

  * every key whose last acknowledged request was a PUT reads back identical (SHA-256
    of the body, size and ETag), unless the request in flight when the server died
    replaced it; an acknowledged DELETE stays deleted unless such a request re-put it;
  * every visible object is byte for byte a version the model allows: nothing
    half-written, mixed or stale is visible, and an unacknowledged request is visible
    entirely or not at all;
  * ListObjectsV2 (paged) lists exactly the keys HEAD finds, with the same sizes and
    ETags, and nothing else;
  * no request failed before the kill.

The observed state becomes the model for the next round. After the last round the
server is stopped cleanly (SIGTERM) and checked once more after a restart, which must
have nothing to recover.

Knobs (environment): TIDESTORE_S3_CRASH_ROUNDS (default 8), TIDESTORE_S3_CRASH_SEED.
Run with -s to see each round.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sys
import threading
import time

from botocore.exceptions import ClientError

from tidestore.testing import start, stop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIB = 1 << 20
CHUNK = 4 * MIB  # the server's default chunk size: sizes around it are worth hitting
ROUNDS = int(os.environ.get("TIDESTORE_S3_CRASH_ROUNDS", "8"))
WRITERS = 6
KEYS_PER_WRITER = 8
KILL_AFTER = (0.2, 1.5)  # seconds of writing before the SIGKILL
MPU_PART = 5 * MIB  # S3's minimum part size
BUCKET = "crash-bucket"


# ---- the data ----------------------------------------------------------------------------
def version_size(key: str, gen: int, multipart: bool) -> int:
    rng = random.Random(f"size/{key}/{gen}")
    if multipart:  # two parts: 5 MiB and the rest
        return MPU_PART + rng.choice([1, 1000, MIB, CHUNK - 1, CHUNK, rng.randrange(1, 6 * MIB)])
    return rng.choice([
        0, 1, 17, rng.randrange(2, 4096), 64 << 10, (64 << 10) + 1, rng.randrange(4096, MIB),
        MIB, MIB + 1, CHUNK - 1, CHUNK, CHUNK + 1, rng.randrange(CHUNK, 10 * MIB),
        2 * CHUNK, 2 * CHUNK + 7, 10 * MIB,
    ])


def version_bytes(key: str, gen: int, size: int) -> bytes:
    head = f"{key}|{gen}|".encode()
    return (head + hashlib.shake_128(head).digest(max(size - len(head), 0)))[:size]


class Version:
    """One generation of one key: what its bytes, size and ETag must be."""

    __slots__ = ("key", "gen", "size", "sha256", "etag", "multipart")

    def __init__(self, key: str, gen: int, data: bytes, etag: str, multipart: bool):
        self.key, self.gen, self.size, self.multipart = key, gen, len(data), multipart
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.etag = etag

    def __repr__(self):
        kind = "multipart" if self.multipart else "put"
        return f"{kind} gen {self.gen} ({self.size} B)"


def multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


# ---- the model -----------------------------------------------------------------------------
ABSENT = None


class Model:
    """Per key: the acknowledged state (a Version or ABSENT) and the one request that
    may have been in flight when the server died (('put', Version) or ('delete',))."""

    def __init__(self, keys):
        self.keys = list(keys)
        self.state: dict = {k: ABSENT for k in self.keys}
        self.pending: dict = {}
        self.versions: dict = {}  # (key, gen) -> Version, every one ever attempted
        self.next_gen: dict = {k: 0 for k in self.keys}
        self.acks = 0
        self.lock = threading.Lock()

    def allowed(self, key):
        """The states the key may be found in after a crash."""
        out = [self.state[key]]
        op = self.pending.get(key)
        if op is not None:
            out.append(op[1] if op[0] == "put" else ABSENT)
        return out


# ---- the writers ---------------------------------------------------------------------------
class Writer(threading.Thread):
    def __init__(self, idx: int, server, model: Model, keys: list, killed: threading.Event,
                 seed: int, errors: list):
        super().__init__(name=f"crash-writer-{idx}", daemon=True)
        self.s3 = server.boto3_client(connect_timeout=2, read_timeout=15)
        self.model, self.keys, self.killed = model, keys, killed
        self.rng = random.Random(seed)
        self.errors = errors
        self.done_ops = 0

    def run(self):
        m = self.model
        while not self.killed.is_set():
            key = self.rng.choice(self.keys)
            roll = self.rng.random()
            op = "delete" if roll < 0.2 else ("multipart" if roll < 0.3 else "put")
            with m.lock:
                gen = m.next_gen[key]
                m.next_gen[key] += 1
            try:
                if op == "delete":
                    m.pending[key] = ("delete",)
                    self.s3.delete_object(Bucket=BUCKET, Key=key)
                    new = ABSENT
                else:
                    new = self._put(key, gen, op == "multipart")
            except Exception as exc:  # noqa: BLE001 - whatever the client raised
                if not self.killed.is_set():
                    self.errors.append(f"{op} {key} gen {gen} failed before the kill: {exc!r}")
                return  # the request stays pending: it may or may not have happened
            with m.lock:  # acknowledged
                m.state[key] = new
                m.pending.pop(key, None)
                m.acks += 1
            self.done_ops += 1

    def _put(self, key: str, gen: int, multipart: bool) -> Version:
        m = self.model
        size = version_size(key, gen, multipart)
        data = version_bytes(key, gen, size)
        if not multipart:
            version = Version(key, gen, data, hashlib.md5(data).hexdigest(), False)
            m.versions[(key, gen)] = version
            m.pending[key] = ("put", version)
            resp = self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
            got = resp["ETag"].strip('"')
            if got != version.etag:
                self.errors.append(f"put {key} gen {gen}: ETag {got}, expected {version.etag}")
            return version
        parts = [data[:MPU_PART], data[MPU_PART:]]
        version = Version(key, gen, data, multipart_etag(parts), True)
        m.versions[(key, gen)] = version
        # the upload becomes a possible outcome only once Complete is sent, but marking it
        # now is equivalent: until then it cannot be visible, and "pending" allows absence
        m.pending[key] = ("put", version)
        upload = self.s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        etags = []
        for number, part in enumerate(parts, 1):
            r = self.s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number,
                                    Body=part)
            etags.append({"PartNumber": number, "ETag": r["ETag"]})
        resp = self.s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                                 MultipartUpload={"Parts": etags})
        got = resp["ETag"].strip('"')
        if got != version.etag:
            self.errors.append(f"multipart {key} gen {gen}: ETag {got}, expected {version.etag}")
        return version


# ---- checking ------------------------------------------------------------------------------
def identify(model: Model, key: str, size: int, sha: str):
    """The version these bytes are, preferring the ones the model allows (versions of
    the same size and content, such as empty ones, are indistinguishable)."""
    candidates = [a for a in model.allowed(key) if a is not ABSENT]
    candidates += [v for (k, _g), v in model.versions.items() if k == key]
    for v in candidates:
        if v.size == size and v.sha256 == sha:
            return v
    return None


def describe(state) -> str:
    return "absent" if state is ABSENT else repr(state)


def check_store(s3, model: Model, label: str) -> list[str]:
    """Compare what the server shows with what the model allows; then make the model
    the observed state. Returns the problems found."""
    problems = []
    listed = {}
    token = None
    while True:
        kw = {"Bucket": BUCKET, "MaxKeys": 7}
        if token:
            kw["ContinuationToken"] = token
        page = s3.list_objects_v2(**kw)
        for obj in page.get("Contents", []):
            if obj["Key"] in listed:
                problems.append(f"{label}: {obj['Key']} listed twice")
            listed[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'))
        if not page.get("IsTruncated"):
            break
        token = page["NextContinuationToken"]
    for key in sorted(set(listed) - set(model.keys)):
        problems.append(f"{label}: listing shows {key!r}, which no client ever wrote")

    for key in model.keys:
        allowed = model.allowed(key)
        try:
            head = s3.head_object(Bucket=BUCKET, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
                raise
            head = None
        if head is None:
            observed = ABSENT
            if key in listed:
                problems.append(f"{label}: {key} is listed {listed[key]} but HEAD says 404")
        else:
            size, etag = head["ContentLength"], head["ETag"].strip('"')
            if listed.get(key) != (size, etag):
                problems.append(f"{label}: {key}: HEAD says size {size} ETag {etag}, listing says "
                                f"{listed.get(key, 'nothing')}")
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            sha = hashlib.sha256(body).hexdigest()
            observed = identify(model, key, len(body), sha)
            if observed is None:
                head_txt = body[:40]
                problems.append(f"{label}: {key} holds {len(body)} bytes (starting {head_txt!r}) that "
                                f"are no version ever written: half-written or mixed; allowed: "
                                f"{[describe(a) for a in allowed]}")
                continue
            if size != observed.size or len(body) != size:
                problems.append(f"{label}: {key}: HEAD size {size}, body {len(body)} B, "
                                f"{observed!r} has {observed.size}")
            if etag != observed.etag:
                problems.append(f"{label}: {key}: ETag {etag}, {observed!r} has {observed.etag}")
        if not any(observed is a for a in allowed):
            problems.append(f"{label}: {key} is {describe(observed)}; allowed: "
                            f"{[describe(a) for a in allowed]}"
                            + (" (an acknowledged write was lost or an old version came back)"))
        model.state[key] = observed
    model.pending.clear()
    return problems


# ---- the test ------------------------------------------------------------------------------
def _start(data_dir: str):
    return start(data_dir, timeout=60)


def test_sigkill_under_s3_load(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    seed = int(os.environ.get("TIDESTORE_S3_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    data = str(tmp_path / "data")
    keys_by_writer = [[f"w{w}/obj-{i:02d}" for i in range(KEYS_PER_WRITER)] for w in range(WRITERS)]
    model = Model(k for ks in keys_by_writer for k in ks)
    log = []

    def say(msg):
        log.append(msg)
        print(f"[crash seed={seed}] {msg}", file=sys.stderr)

    server = _start(data)
    try:
        server.boto3_client().create_bucket(Bucket=BUCKET)
        for rnd in range(1, ROUNDS + 1):
            killed = threading.Event()
            errors: list = []
            writers = [Writer(w, server, model, keys_by_writer[w], killed, rng.randrange(1 << 30), errors)
                       for w in range(WRITERS)]
            acks_before = model.acks
            for w in writers:
                w.start()
            time.sleep(rng.uniform(*KILL_AFTER))
            killed.set()
            os.kill(server.pid, signal.SIGKILL)
            server.process.wait(10)
            for w in writers:
                w.join(30)
                assert not w.is_alive(), f"{w.name} still running 30 s after the kill"
            in_flight = len(model.pending)
            t0 = time.perf_counter()
            server = _start(data)
            restart_s = time.perf_counter() - t0
            recovered = [line for line in server.output if line.startswith("Recovered")]
            problems = errors + check_store(server.boto3_client(connect_timeout=5, read_timeout=60),
                                            model, f"round {rnd}")
            visible = sum(1 for s in model.state.values() if s is not ABSENT)
            say(f"round {rnd}: {model.acks - acks_before} acknowledged, {in_flight} in flight at "
                f"the kill; restart {restart_s:.2f}s "
                f"({recovered[0] if recovered else 'no recovery line'}); {visible} objects visible")
            assert not problems, (f"seed {seed}, round {rnd}:\n  " + "\n  ".join(problems)
                                  + "\nserver output:\n  " + "\n  ".join(server.output[-20:]))

        # a clean stop: everything stays, and the next start has nothing to recover
        assert stop(server) == 0, "\n".join(server.output[-20:])
        server = _start(data)
        problems = check_store(server.boto3_client(connect_timeout=5, read_timeout=60), model,
                               "after a clean restart")
        assert not problems, f"seed {seed}:\n  " + "\n  ".join(problems)
        recovered = [line for line in server.output if line.startswith("Recovered")]
        assert not recovered, f"a clean shutdown left work for recovery: {recovered}"
        say(f"clean restart: {sum(1 for s in model.state.values() if s is not ABSENT)} objects "
            f"visible, nothing to recover")
    finally:
        if server.process.poll() is None:
            stop(server)
        shutil.rmtree(data, ignore_errors=True)
