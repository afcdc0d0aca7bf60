"""S3 benchmark: Tidestore against moto's standalone server, same machine, same load.

Usage (from the repository root, in an environment with moto[server], psutil, aiohttp):

    python benchmarks/s3_bench.py              # default run, about 2 minutes
    python benchmarks/s3_bench.py --quick      # shorter phases, under 1 minute
    python benchmarks/s3_bench.py --duration 30 --keep
    python benchmarks/s3_bench.py --py-spy /tmp/prof   # + profiled Tidestore phases afterwards

What it measures, for each server, with SigV4 auth on (Tidestore verifies every
signature; moto accepts any) and every Tidestore PUT durable (fsync) before its 200:

* 4 KiB PUT and GET: ops/s and p50/p99 latency at concurrency 16. The requests are
  signed here in Python beforehand (tens of thousands of distinct PUTs to distinct keys
  with the body's real SHA-256 in x-amz-content-sha256; GETs of 1,000 pre-written
  keys) and replayed by `wrk` through a generated Lua script, so the client costs
  next to nothing; without wrk an asyncio client replays the same bytes (the output
  says which generator ran). The same requests go to both servers.
* 64 MiB PUT and GET: MB/s (MB = 10^6 bytes) over sequential repetitions, streamed
  with http.client and signed with UNSIGNED-PAYLOAD; every GET's bytes are compared
  with what was PUT.
* Peak server RSS (process and children), sampled every 20 ms through every phase.

A bare aiohttp handler is measured with the same clients first: its rates are the
ceiling this machine's clients + Python HTTP stack give, and show the generator is
not the bottleneck. Every phase also prints the server's CPU (and CPU per request),
the generator's CPU, and the CPU that other processes on the machine used meanwhile:
client and server share two cores, so anything else running skews the figures, and
the output says so.

Goals (from the issue): small PUT >= 10x moto, small GET >= 20x moto, large PUT >=
2.5x moto, large GET >= 1.5x moto. Every goal gets a verdict, met or NOT MET.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tidestore import testing  # noqa: E402
from bench_support import machine_info as _machine_info  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
MB = 1_000_000
BUCKET = "bench"
REGION = "us-east-1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"
ACCESS_KEY = "TSBENCHACCESSKEY0001"
SECRET_KEY = "tidestore-bench-secret-key-000000000000"

# The issue's moto figures on this machine (SigV4, wrk, concurrency 16), for reference.
ISSUE_MOTO = {"small_put_ops": 250, "small_get_ops": 260, "large_put_mbs": 145,
              "large_get_mbs": 900, "peak_rss_mb": 590}
GOALS = {"small_put_ops": 10.0, "small_get_ops": 20.0, "large_put_mbs": 2.5, "large_get_mbs": 1.5}


# ---- SigV4, client side ---------------------------------------------------------------
class Signer:
    """Header-based SigV4 for path-style requests to one host. Paths must already be in
    canonical form (the benchmark's keys are [a-z0-9/-] only)."""

    def __init__(self, host: str, access_key: str, secret_key: str, region: str = REGION):
        self.host, self.access_key, self.secret_key, self.region = host, access_key, secret_key, region
        self._keys: dict = {}

    def _key(self, date: str) -> bytes:
        k = self._keys.get(date)
        if k is None:
            k = hmac.new(("AWS4" + self.secret_key).encode(), date.encode(), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys[date] = k
        return k

    def headers(self, method: str, path: str, payload_hash: str, amz_date: str | None = None) -> list:
        """[(name, value)] to send: Host, x-amz-content-sha256, x-amz-date, Authorization."""
        amz_date = amz_date or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        date = amz_date[:8]
        scope = f"{date}/{self.region}/s3/aws4_request"
        signed = "host;x-amz-content-sha256;x-amz-date"
        canonical = (f"{method}\n{path}\n\nhost:{self.host}\nx-amz-content-sha256:{payload_hash}\n"
                     f"x-amz-date:{amz_date}\n\n{signed}\n{payload_hash}")
        to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        sig = hmac.new(self._key(date), to_sign.encode(), hashlib.sha256).hexdigest()
        auth = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                f"SignedHeaders={signed}, Signature={sig}")
        return [("Host", self.host), ("x-amz-content-sha256", payload_hash),
                ("x-amz-date", amz_date), ("Authorization", auth)]

    def raw_head(self, method: str, path: str, payload_hash: str, body_len: int | None,
                 amz_date: str) -> list:
        """The request line and header lines of one request (no CRLFs), body not included."""
        lines = [f"{method} {path} HTTP/1.1"]
        lines += [f"{n}: {v}" for n, v in self.headers(method, path, payload_hash, amz_date)]
        if body_len is not None:
            lines.append(f"Content-Length: {body_len}")
        return lines


def simple_request(host: str, port: int, signer: Signer, method: str, path: str,
                   body: bytes = b"", timeout: float = 60.0) -> tuple[int, bytes]:
    """One signed request with a small body (payload hash signed); (status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = hashlib.sha256(body).hexdigest()
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for n, v in signer.headers(method, path, payload):
            conn.putheader(n, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---- servers ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


@dataclass
class Target:
    name: str
    host: str
    port: int
    pid: int
    signer: Signer
    stop: object  # callable
    data_dir: str | None = None
    version: str = ""


def start_tidestore(work: str, config: str | None = None) -> Target:
    data_dir = os.path.join(work, "tidestore-data")
    os.environ["PYTHONPATH"] = REPO + (os.pathsep + os.environ["PYTHONPATH"]
                                       if os.environ.get("PYTHONPATH") else "")
    srv = testing.start(data_dir, listen="127.0.0.1:0", access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                        extra_args=("--config", config) if config else ())
    hostport = srv.endpoint.split("//", 1)[1]
    host, port = hostport.rsplit(":", 1)
    return Target("tidestore", host, int(port), srv.pid, Signer(hostport, ACCESS_KEY, SECRET_KEY),
                  lambda: testing.stop(srv), data_dir)


def moto_command(port: int) -> list:
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    if os.path.exists(exe):
        return [exe, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def start_subprocess_server(name: str, cmd: list, port: int, log_path: str) -> Target:
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        log.close()
        raise

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()

    hostport = f"127.0.0.1:{port}"
    # moto accepts any credentials; it gets the same signed requests as Tidestore
    return Target(name, "127.0.0.1", port, proc.pid, Signer(hostport, ACCESS_KEY, SECRET_KEY), stop)


def start_moto(work: str) -> Target:
    import importlib.util

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise SystemExit("moto's standalone server is not installed: pip install 'moto[server]'")
    port = free_port()
    t = start_subprocess_server("moto", moto_command(port), port, os.path.join(work, "moto.log"))
    with contextlib.suppress(Exception):
        from importlib.metadata import version
        t.version = version("moto")
    return t


BARE_AIOHTTP = r"""
import sys
from aiohttp import web
BIG = bytes(int(sys.argv[2]))  # what a GET of /bench/large... returns
SMALL = bytes(4096)  # what any other GET returns: the same size as the small objects
async def handle(request):
    while await request.content.readany():  # read and drop the body, streaming
        pass
    if request.method == "GET" and request.path.startswith("/bench/large"):
        resp = web.StreamResponse(status=200, headers={"Content-Length": str(len(BIG))})
        await resp.prepare(request)
        view = memoryview(BIG)
        for off in range(0, len(BIG), 1 << 20):  # 1 MiB writes, as a streaming server does
            await resp.write(view[off:off + (1 << 20)])
        await resp.write_eof()
        return resp
    return web.Response(status=200, body=SMALL if request.method == "GET" else b"")
app = web.Application(client_max_size=1 << 20)
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def start_bare_aiohttp(work: str, large_size: int) -> Target:
    port = free_port()
    return start_subprocess_server("bare aiohttp", [sys.executable, "-c", BARE_AIOHTTP, str(port),
                                                    str(large_size)],
                                   port, os.path.join(work, "bare.log"))


# ---- resource monitor -----------------------------------------------------------------------
class Monitor:
    """Samples a server's RSS (process + children) every `interval` seconds; CPU time
    per phase from psutil's cpu_times (process + live children)."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._phase_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _procs(self):
        procs = [self.proc]
        with contextlib.suppress(psutil.Error):
            procs += self.proc.children(recursive=True)
        return procs

    def rss(self) -> int:
        total = 0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def cpu(self) -> float:
        total = 0.0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def _run(self):
        while not self._stop.is_set():
            r = self.rss()
            self.peak = max(self.peak, r)
            self._phase_peak = max(self._phase_peak, r)
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def phase(self):
        """Fills wall_s, server_cpu_s, peak_rss, and others_cpu_s: CPU that other user
        processes on this machine (not the server, this benchmark, its load generator or
        kernel threads) used meanwhile. Other work sharing the two cores skews every figure."""
        out: dict = {}
        self._phase_peak = self.rss()
        before = _cpu_by_process()
        cpu0, t0 = self.cpu(), time.monotonic()
        try:
            yield out
        finally:
            out["wall_s"] = time.monotonic() - t0
            out["server_cpu_s"] = self.cpu() - cpu0
            out["peak_rss"] = max(self._phase_peak, self.rss())
            self.peak = max(self.peak, out["peak_rss"])
            mine = {p.pid for p in self._procs()} | {os.getpid()}
            with contextlib.suppress(psutil.Error):
                mine |= {c.pid for c in psutil.Process().children(recursive=True)}
            after = _cpu_by_process()
            out["others_cpu_s"] = sum(max(0.0, c - before.get(pid, 0.0))
                                      for pid, c in after.items() if pid not in mine)

    def close(self):
        self._stop.set()
        self._thread.join()


def _cpu_by_process() -> dict:
    """pid -> user+system CPU seconds of every user-space process (kernel threads left out)."""
    out = {}
    for p in psutil.process_iter(["pid", "ppid", "cpu_times"]):
        info = p.info
        if info["cpu_times"] is None or info["pid"] == 2 or info["ppid"] == 2:
            continue
        out[info["pid"]] = info["cpu_times"].user + info["cpu_times"].system
    return out


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---- small-object load: request sets -----------------------------------------------------------
@dataclass
class RequestSet:
    """Pre-signed requests: head blocks (request line + headers) and one shared body."""
    name: str
    heads: list  # of lists of header lines
    body: bytes


def small_put_set(signer: Signer, prefix: str, count: int, body: bytes) -> RequestSet:
    amz_date = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha256(body).hexdigest()
    heads = [signer.raw_head("PUT", f"/{BUCKET}/{prefix}/{i:06d}", digest, len(body), amz_date)
             for i in range(count)]
    return RequestSet("PUT", heads, body)


def small_get_set(signer: Signer, prefix: str, count: int) -> RequestSet:
    amz_date = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    heads = [signer.raw_head("GET", f"/{BUCKET}/{prefix}/{i:06d}", EMPTY_SHA256, None, amz_date)
             for i in range(count)]
    return RequestSet("GET", heads, b"")


# ---- generator 1: wrk with a Lua script --------------------------------------------------------
WRK_LUA = r"""
-- generated by benchmarks/s3_bench.py: replays pre-signed requests, one per call
local heads_path = "@HEADS@"
local body_path = "@BODY@"
local nthreads = @NTHREADS@
local counter = 0
local reqs = {}
local n = 0
local body = ""
local idx = 0

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
end

function init(args)
   local f = assert(io.open(heads_path, "rb"))
   for line in f:lines() do
      n = n + 1
      reqs[n] = (string.gsub(line, "\t", "\r\n"))
   end
   f:close()
   if body_path ~= "" then
      local bf = assert(io.open(body_path, "rb"))
      body = bf:read("*a")
      bf:close()
   end
   idx = (tid or 1) - 1   -- threads take interleaved slices: no two replay the same request
end

function request()
   local r = reqs[(idx % n) + 1]
   idx = idx + nthreads
   return r .. body
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCHJSON {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, \"connect\": %d, " ..
      "\"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d, \"p50_us\": %d, " ..
      "\"p90_us\": %d, \"p99_us\": %d, \"mean_us\": %.1f, \"max_us\": %d}\n",
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.mean, latency.max))
end
"""


class WrkGenerator:
    name = "wrk"

    def __init__(self, exe: str, threads: int, work: str):
        self.exe, self.threads, self.work = exe, threads, work
        out = subprocess.run([exe, "-v"], capture_output=True, text=True)
        self.version = (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr) else "wrk"

    def run(self, target: Target, reqs: RequestSet, concurrency: int, duration: float) -> dict:
        tag = f"{target.name.replace(' ', '_')}-{reqs.name}-{len(reqs.heads)}"
        heads_path = os.path.join(self.work, f"{tag}.heads")
        body_path = os.path.join(self.work, f"{tag}.body") if reqs.body else ""
        with open(heads_path, "w") as f:
            for lines in reqs.heads:
                f.write("\t".join(lines) + "\t\t\n")
        if body_path:
            with open(body_path, "wb") as f:
                f.write(reqs.body)
        threads = min(self.threads, concurrency)
        script = os.path.join(self.work, f"{tag}.lua")
        with open(script, "w") as f:
            f.write(WRK_LUA.replace("@HEADS@", heads_path).replace("@BODY@", body_path)
                    .replace("@NTHREADS@", str(threads)))
        cmd = [self.exe, "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(duration))}s",
               "--timeout", "30s", "--latency", "-s", script, f"http://{target.host}:{target.port}/"]
        cpu0 = children_cpu()
        out = subprocess.run(cmd, capture_output=True, text=True)
        gen_cpu = children_cpu() - cpu0
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
        if out.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        r = json.loads(line[len("BENCHJSON "):])
        secs = r["duration_us"] / 1e6
        return {"ops": r["requests"] / secs, "requests": r["requests"], "seconds": secs,
                "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000,
                "p99_ms": r["p99_us"] / 1000, "max_ms": r["max_us"] / 1000,
                "errors": {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]},
                "gen_cpu_s": gen_cpu}


# ---- generator 2: asyncio replay of the same bytes (when wrk is missing) ----------------------
class PythonGenerator:
    version = f"asyncio, Python {platform.python_version()}"

    def __init__(self, work: str, reason: str):
        self.work = work
        self.name = f"python-asyncio ({reason}; slower than wrk: see the bare-handler ceiling)"

    def run(self, target: Target, reqs: RequestSet, concurrency: int, duration: float) -> dict:
        payloads = [("\r\n".join(lines) + "\r\n\r\n").encode() + reqs.body for lines in reqs.heads]
        t0c = time.process_time()
        res = asyncio.run(self._run(target, payloads, concurrency, duration))
        res["gen_cpu_s"] = time.process_time() - t0c
        return res

    async def _run(self, target, payloads, concurrency, duration):
        n = len(payloads)
        state = {"next": 0}
        lat: list = []
        errors: Counter = Counter()
        stop_at = time.perf_counter() + duration

        async def worker():
            reader = writer = None
            while time.perf_counter() < stop_at:
                if writer is None:
                    try:
                        reader, writer = await asyncio.open_connection(target.host, target.port)
                    except OSError:
                        errors["connect"] += 1
                        await asyncio.sleep(0.01)
                        continue
                i = state["next"]
                state["next"] = i + 1
                t = time.perf_counter()
                try:
                    writer.write(payloads[i % n])
                    head = await reader.readuntil(b"\r\n\r\n")
                    status, length, chunked, close = _parse_head(head)
                    if chunked:
                        while True:
                            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                            await reader.readexactly(size + 2)
                            if size == 0:
                                break
                    elif length is not None:
                        await reader.readexactly(length)
                    else:
                        await reader.read()
                        close = True
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                    errors["read"] += 1
                    writer.close()
                    reader = writer = None
                    continue
                lat.append(time.perf_counter() - t)
                if not 200 <= status < 400:
                    errors["status"] += 1
                if close:
                    writer.close()
                    reader = writer = None
            if writer is not None:
                writer.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        secs = time.perf_counter() - t0
        lat.sort()

        def pct(p):
            return lat[min(len(lat) - 1, int(len(lat) * p / 100))] * 1000 if lat else float("nan")

        return {"ops": len(lat) / secs, "requests": len(lat), "seconds": secs, "p50_ms": pct(50),
                "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": lat[-1] * 1000 if lat else float("nan"),
                "errors": dict(errors)}


def _parse_head(head: bytes):
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked, close = None, False, lines[0].startswith("HTTP/1.0")
    for ln in lines[1:]:
        name, _, value = ln.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection":
            close = value == "close"
    return status, length, chunked, close


# ---- prepopulation and checks --------------------------------------------------------------------
def put_many(target: Target, paths: list, body: bytes, workers: int = 8) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(path):
        status, resp = simple_request(target.host, target.port, target.signer, "PUT", path, body)
        if status != 200:
            raise RuntimeError(f"{target.name}: PUT {path} -> {status}: {resp[:300]!r}")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, paths))


def check_get(target: Target, path: str, body: bytes) -> None:
    status, got = simple_request(target.host, target.port, target.signer, "GET", path)
    if status != 200 or got != body:
        raise RuntimeError(f"{target.name}: GET {path} -> {status}, {len(got)} bytes, "
                           f"content {'matches' if got == body else 'DIFFERS'}")


# ---- large objects --------------------------------------------------------------------------------
def put_large(target: Target, path: str, data: bytes, piece: int = MiB) -> float:
    data = memoryview(data)
    conn = http.client.HTTPConnection(target.host, target.port, timeout=300)
    try:
        t0 = time.perf_counter()
        conn.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
        for n, v in target.signer.headers("PUT", path, UNSIGNED):
            conn.putheader(n, v)
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()
        for off in range(0, len(data), piece):
            conn.send(data[off:off + piece])
        resp = conn.getresponse()
        body = resp.read()
        secs = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"{target.name}: PUT {path} -> {resp.status}: {body[:300]!r}")
        return secs
    finally:
        conn.close()


def get_large(target: Target, path: str, expect: bytes, buf: bytearray) -> float:
    """Stream the object into `buf` (preallocated, reused), time the transfer only, then
    check length and every byte against `expect` (one memcmp, outside the timing)."""
    conn = http.client.HTTPConnection(target.host, target.port, timeout=300)
    view = memoryview(buf)
    try:
        t0 = time.perf_counter()
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for n, v in target.signer.headers("GET", path, EMPTY_SHA256):
            conn.putheader(n, v)
        conn.endheaders()
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"{target.name}: GET {path} -> {resp.status}: {resp.read()[:300]!r}")
        got = 0
        while got < len(view):
            n = resp.readinto(view[got:])
            if not n:
                break
            got += n
        extra = len(resp.read(1)) if got == len(view) else 0
        secs = time.perf_counter() - t0
        view.release()
        if got + extra != len(expect) or buf[:got] != expect:
            raise RuntimeError(f"{target.name}: GET {path} returned {got + extra} bytes (expected "
                               f"{len(expect)}), content "
                               f"{'matches' if buf[:got] == expect[:got] else 'DIFFERS'}")
        return secs
    finally:
        conn.close()


# ---- profiling (optional) ---------------------------------------------------------------------
class PySpy:
    """`py-spy record --format raw --threads` on the server during a phase, then a summary."""

    def __init__(self, out_dir: str):
        self.exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if not os.path.exists(self.exe):
            raise SystemExit("--py-spy needs py-spy (pip install py-spy)")
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)

    @contextlib.contextmanager
    def record(self, pid: int, name: str, duration: float):
        raw = os.path.join(self.out_dir, f"{name}.txt")
        proc = subprocess.Popen([self.exe, "record", "-p", str(pid), "-r", "200", "-d",
                                 str(int(duration) + 2), "--format", "raw", "--threads", "-o", raw],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # attach
        server = psutil.Process(pid)
        before = {t.id: t.user_time + t.system_time for t in server.threads()}
        t0 = time.monotonic()
        try:
            yield raw
        finally:
            wall = time.monotonic() - t0
            cpu = {t.id: t.user_time + t.system_time - before.get(t.id, 0.0) for t in server.threads()}
            proc.wait(duration + 60)
        print(summarize_collapsed(raw, name, {tid: c / wall for tid, c in cpu.items()}), flush=True)


_PROJECT = ("s3front/", "engine/", "raftlog/", "tidestore/", "tiering/")
# leaf frames of a thread that is waiting, not working (py-spy cannot always tell)
_IDLE = ("EpollSelector.select (", "Condition.wait (", "_worker (concurrent/futures/thread.py)",
         "Event.wait (", "Thread.join (", "Semaphore.acquire (")


def summarize_collapsed(path: str, name: str, cpu_by_tid: dict | None = None, top: int = 14) -> str:
    """Per-thread CPU (from /proc over the phase), then where the event loop's busy
    samples go (own and project-inclusive), then the other threads' busy samples.
    Line numbers are folded into functions."""
    import re

    loop_own: Counter = Counter()
    loop_incl: Counter = Counter()
    other_own: Counter = Counter()
    names: dict = {}
    loop_total = loop_idle = other_busy = 0
    if not os.path.exists(path):
        return f"  [{name}] no profile written"
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack.split(";")]
            thread = "?"
            m = re.match(r"thread \((\d+)\): (.*)", frames[0])
            if m:
                names[int(m.group(1))] = thread = m.group(2)
                frames = frames[1:] or ["?"]
            idle = frames[-1].startswith(_IDLE)
            if thread == "MainThread":
                loop_total += n
                if idle:
                    loop_idle += n
                    continue
                loop_own[frames[-1]] += n
                for fr in set(frames):
                    loop_incl[fr] += n
            elif not idle:
                other_busy += n
                other_own[f"[{re.sub(r'_[0-9]+$', '', thread)}] {frames[-1]}"] += n
    out = [f"  [{name}] raw stacks: {path}"]
    if cpu_by_tid:
        per_name: Counter = Counter()
        for tid, share in cpu_by_tid.items():
            per_name[re.sub(r"_[0-9]+$", "*", names.get(tid, f"tid {tid}"))] += share
        out.append("    server CPU by thread (100% = one core): " + ", ".join(
            f"{t} {100 * c:.0f}%" for t, c in per_name.most_common() if c >= 0.005))
    if loop_total:
        busy = loop_total - loop_idle
        out.append(f"    event loop: {100 * busy / loop_total:.0f}% of its samples busy "
                   f"(the rest waiting in select); of the busy samples:")
        out.append("      own%  incl%  hottest functions (own time)")
        for fr, n in loop_own.most_common(top):
            out.append(f"     {100 * n / busy:5.1f}  {100 * loop_incl[fr] / busy:5.1f}  {fr}")
        out.append("      incl%  project functions (inclusive)")
        proj = [(fr, n) for fr, n in loop_incl.most_common()
                if any(p in fr for p in _PROJECT) and "tidestore/cli.py" not in fr
                and "tidestore/__main__.py" not in fr]
        for fr, n in proj[:top]:
            out.append(f"     {100 * n / busy:5.1f}  {fr}")
    if other_busy:
        out.append("    other threads, busy samples (% of those):")
        for fr, n in other_own.most_common(8):
            out.append(f"     {100 * n / other_busy:5.1f}  {fr}")
    return "\n".join(out)


# ---- one server, all phases -------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    phases: dict = field(default_factory=dict)
    peak_rss: int = 0
    large_put: list = field(default_factory=list)
    large_get: list = field(default_factory=list)


def settle_cold_tier(target: Target, log, timeout: float = 300.0) -> None:
    """Wait until Tidestore's shipper has no full segment left to ship (idle, or
    waiting for a partial one to reach its seal age), so that a phase does not pay for
    the shipping of the writes of the phases before it (the embedded default ships to
    six local directories; moto has no such work). Shipping caused by a phase's own
    writes still runs during that phase."""
    if target.name != "tidestore":
        return
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(f"http://{target.host}:{target.port}/_tidestore/status",
                                        timeout=5) as r:
                st = json.load(r)["members"][0]
        except OSError:
            time.sleep(0.2)
            continue
        cold = st.get("cold") or {}
        state = (cold.get("shipper") or {}).get("state")
        quiet = quiet + 1 if state in (None, "idle", "waiting") else 0
        if quiet >= 3:  # three looks in a row: not between two segments
            if time.monotonic() - t0 > 1:
                log(f"  {target.name}: cold tier caught up in {time.monotonic() - t0:.1f}s")
            return
        time.sleep(0.2)
    log(f"  {target.name}: WARNING: the cold tier did not catch up in {timeout:.0f}s")


def run_server(target: Target, gen, args, small_body: bytes, large: bytes, log) -> Result:
    res = Result(target.name)
    mon = Monitor(target.pid)
    try:
        status, body = simple_request(target.host, target.port, target.signer, "PUT", f"/{BUCKET}")
        if status != 200:
            raise RuntimeError(f"{target.name}: CreateBucket -> {status}: {body[:300]!r}")

        # small GET keys, written beforehand
        get_paths = [f"/{BUCKET}/small-get/{i:06d}" for i in range(args.get_keys)]
        put_many(target, get_paths, small_body)
        check_get(target, get_paths[-1], small_body)

        # 4 KiB PUT: warm-up on its own keys, then the measured run
        warm = small_put_set(target.signer, "small-warm", 2000, small_body)
        gen.run(target, warm, args.concurrency, args.warmup)
        settle_cold_tier(target, log)
        puts = small_put_set(target.signer, "small-put", args.put_keys, small_body)
        with mon.phase() as ph:
            r = gen.run(target, puts, args.concurrency, args.duration)
        res.phases["small_put"] = {**r, **ph}
        log(f"  {target.name}: 4 KiB PUT  {fmt_phase(res.phases['small_put'])}")
        # spot checks (wrk spends one request per thread verifying the script, so the
        # lowest indices may never be sent before wrap-around; check well-inside ones)
        for i in (3, min(r["requests"], args.put_keys) // 4, min(r["requests"], args.put_keys) // 2):
            check_get(target, f"/{BUCKET}/small-put/{i:06d}", small_body)

        # 4 KiB GET
        settle_cold_tier(target, log)
        gets = small_get_set(target.signer, "small-get", args.get_keys)
        gen.run(target, gets, args.concurrency, args.warmup)
        with mon.phase() as ph:
            r = gen.run(target, gets, args.concurrency, args.duration)
        res.phases["small_get"] = {**r, **ph}
        log(f"  {target.name}: 4 KiB GET  {fmt_phase(res.phases['small_get'])}")

        # 64 MiB PUT, then GET of each object written
        size_mb = len(large) / MB
        put_large(target, f"/{BUCKET}/large-warm", large)
        settle_cold_tier(target, log)
        with mon.phase() as ph:
            for i in range(args.large_reps):
                res.large_put.append(put_large(target, f"/{BUCKET}/large/{i:03d}", large))
        res.phases["large_put"] = {"mbs": size_mb * len(res.large_put) / sum(res.large_put), **ph}
        log(f"  {target.name}: {args.large_mib} MiB PUT  "
            + ", ".join(f"{size_mb / s:.0f}" for s in res.large_put) + " MB/s"
            + f"  (server CPU {100 * ph['server_cpu_s'] / ph['wall_s']:.0f}%, "
              f"other load {fmt_others(ph)}, peak RSS {ph['peak_rss'] / MB:.0f} MB)")
        rbuf = bytearray(len(large))
        get_large(target, f"/{BUCKET}/large-warm", large, rbuf)
        settle_cold_tier(target, log)
        with mon.phase() as ph:
            for i in range(args.large_reps):
                res.large_get.append(get_large(target, f"/{BUCKET}/large/{i:03d}", large, rbuf))
        res.phases["large_get"] = {"mbs": size_mb * len(res.large_get) / sum(res.large_get), **ph}
        log(f"  {target.name}: {args.large_mib} MiB GET  "
            + ", ".join(f"{size_mb / s:.0f}" for s in res.large_get) + " MB/s"
            + f"  (server CPU {100 * ph['server_cpu_s'] / ph['wall_s']:.0f}%, "
              f"other load {fmt_others(ph)}, peak RSS {ph['peak_rss'] / MB:.0f} MB)")
    finally:
        time.sleep(0.05)
        mon.close()
    res.peak_rss = mon.peak
    return res


def profile_server(target: Target, gen, args, small_body: bytes, large: bytes, spy: PySpy, log):
    """Extra Tidestore phases under py-spy, after the measured ones (numbers not reported)."""
    log(f"\nProfiling {target.name} with py-spy (not part of the measured numbers):")
    d = max(5.0, min(args.duration, 15.0))
    puts = small_put_set(target.signer, "prof-put", args.put_keys, small_body)
    with spy.record(target.pid, f"{target.name}-small-put", d):
        r = gen.run(target, puts, args.concurrency, d)
    log(f"    (under py-spy: {r['ops']:.0f} PUT/s)")
    gets = small_get_set(target.signer, "small-get", args.get_keys)
    with spy.record(target.pid, f"{target.name}-small-get", d):
        r = gen.run(target, gets, args.concurrency, d)
    log(f"    (under py-spy: {r['ops']:.0f} GET/s)")
    with spy.record(target.pid, f"{target.name}-large-put", d):
        t_end = time.monotonic() + d
        i = 0
        while time.monotonic() < t_end:
            put_large(target, f"/{BUCKET}/prof-large/{i % 3}", large)
            i += 1
    with spy.record(target.pid, f"{target.name}-large-get", d):
        t_end = time.monotonic() + d
        rbuf = bytearray(len(large))
        while time.monotonic() < t_end:
            get_large(target, f"/{BUCKET}/prof-large/0", large, rbuf)


def fmt_phase(p: dict) -> str:
    per_req = 1e6 * p["server_cpu_s"] / p["requests"] if p["requests"] else float("nan")
    s = (f"{p['ops']:8.0f} ops/s  p50 {p['p50_ms']:.2f} ms  p99 {p['p99_ms']:.2f} ms  "
         f"({p['requests']} requests in {p['seconds']:.1f}s; server CPU "
         f"{100 * p['server_cpu_s'] / p['wall_s']:.0f}% = {per_req:.0f} us/request, generator CPU "
         f"{100 * p['gen_cpu_s'] / p['wall_s']:.0f}%, other load {fmt_others(p)}, "
         f"peak RSS {p['peak_rss'] / MB:.0f} MB)")
    if p["errors"]:
        s += f"  ERRORS {p['errors']}"
    return s


def fmt_others(p: dict) -> str:
    return f"{100 * p.get('others_cpu_s', 0) / p['wall_s']:.0f}%"


OTHERS_WARN = 0.15  # other processes using more than 15% of a core meanwhile: say so


# ---- report -----------------------------------------------------------------------------------
def report(ts: Result, moto: Result, args, gen, bare: dict | None, info: dict) -> tuple[str, list]:
    rows = []
    missed = []

    def errs(r: Result, phase: str) -> bool:
        return bool(r.phases.get(phase, {}).get("errors"))

    def row(metric, key, a, b, unit_fmt, goal=None, phase=None, higher_better=True):
        ratio = a / b if b else float("inf")
        goal_s, met = "-", "-"
        if goal is not None:
            goal_s = f">= {goal:g}x"
            if phase and (errs(ts, phase) or errs(moto, phase)):
                met = "NO (errors)"
                missed.append(f"{metric} (requests failed)")
            elif ratio >= goal:
                met = "met"
            else:
                met = "NOT MET"
                missed.append(f"{metric}: {ratio:.2f}x < {goal:g}x")
        rows.append((metric, unit_fmt.format(a), unit_fmt.format(b), f"{ratio:.2f}x", goal_s, met))

    sp, mp = ts.phases, moto.phases
    c = args.concurrency
    row(f"4 KiB PUT ops/s (c={c})", "small_put_ops", sp["small_put"]["ops"], mp["small_put"]["ops"],
        "{:.0f}", GOALS["small_put_ops"], "small_put")
    row("4 KiB PUT p50 latency ms", None, sp["small_put"]["p50_ms"], mp["small_put"]["p50_ms"], "{:.2f}")
    row("4 KiB PUT p99 latency ms", None, sp["small_put"]["p99_ms"], mp["small_put"]["p99_ms"], "{:.2f}")
    row(f"4 KiB GET ops/s (c={c})", "small_get_ops", sp["small_get"]["ops"], mp["small_get"]["ops"],
        "{:.0f}", GOALS["small_get_ops"], "small_get")
    row("4 KiB GET p50 latency ms", None, sp["small_get"]["p50_ms"], mp["small_get"]["p50_ms"], "{:.2f}")
    row("4 KiB GET p99 latency ms", None, sp["small_get"]["p99_ms"], mp["small_get"]["p99_ms"], "{:.2f}")
    for kind in ("put", "get"):
        a, b = sp[f"small_{kind}"], mp[f"small_{kind}"]
        row(f"4 KiB {kind.upper()} server CPU us/request", None, 1e6 * a["server_cpu_s"] / max(1, a["requests"]),
            1e6 * b["server_cpu_s"] / max(1, b["requests"]), "{:.0f}")
    row(f"{args.large_mib} MiB PUT MB/s", "large_put_mbs", sp["large_put"]["mbs"], mp["large_put"]["mbs"],
        "{:.0f}", GOALS["large_put_mbs"])
    row(f"{args.large_mib} MiB GET MB/s", "large_get_mbs", sp["large_get"]["mbs"], mp["large_get"]["mbs"],
        "{:.0f}", GOALS["large_get_mbs"])
    row("peak server RSS MB", None, ts.peak_rss / MB, moto.peak_rss / MB, "{:.0f}")

    head = ("metric", "tidestore", "moto", "ratio", "goal", "met?")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]

    def line(cells):
        return " | ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                          for i, (x, w) in enumerate(zip(cells, widths)))

    out = [line(head), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out), missed


def machine_info(gen, work: str) -> dict:
    return {**_machine_info(work, ("moto", "aiohttp", "psutil")),
            "mem_gb": psutil.virtual_memory().total / (1 << 30),
            "generator": f"{gen.name} ({gen.version})"}


def find_wrk(install: bool) -> str | None:
    exe = shutil.which("wrk")
    if exe or not install:
        return exe
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk not found: apt-get install -y wrk ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        exe = shutil.which("wrk")
        if not exe:
            subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            exe = shutil.which("wrk")
    if not exe:
        print("wrk not found and not installable here (Debian: `apt-get install -y wrk`); "
              "falling back to the asyncio generator", flush=True)
    return exe


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short phases (about a minute in all)")
    p.add_argument("--duration", type=float, help="seconds per small-object phase (default 15, quick 5)")
    p.add_argument("--keep", action="store_true", help="keep the data directories and generated scripts")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--large-mib", type=int, default=64)
    p.add_argument("--large-reps", type=int, help="sequential large PUTs and GETs (default 5, quick 3)")
    p.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                   help="auto: wrk if present (installed with apt-get when possible), else asyncio")
    p.add_argument("--no-install", action="store_true", help="never try apt-get install wrk")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--servers", default="tidestore,moto", help="comma list: tidestore,moto")
    p.add_argument("--no-baseline", action="store_true", help="skip the bare aiohttp handler")
    p.add_argument("--work-dir", help="where data directories go (default: a temporary directory "
                                      "beside the repository, on its disk)")
    p.add_argument("--json", help="also write all figures to this JSON file")
    p.add_argument("--tidestore-config", metavar="FILE",
                   help="start Tidestore with this TOML config (e.g. [cold] enabled = false, to "
                        "measure without the cold tier shipping)")
    p.add_argument("--py-spy", metavar="DIR",
                   help="after the measured phases, profile Tidestore under the same loads with "
                        "py-spy and write collapsed stacks to DIR")
    args = p.parse_args(argv)
    args.duration = args.duration or (5.0 if args.quick else 15.0)
    args.warmup = 1.0 if args.quick else 2.0
    args.large_reps = args.large_reps or (3 if args.quick else 5)
    args.put_keys = 20000 if args.quick else 60000
    args.get_keys = 1000
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]

    parent = args.work_dir or os.path.dirname(REPO)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="s3bench-", dir=parent)
    gen_dir = os.path.join(work, "load")
    os.makedirs(gen_dir)

    exe = None if args.generator == "python" else find_wrk(not args.no_install)
    if args.generator == "wrk" and not exe:
        raise SystemExit("--generator wrk: wrk not found (Debian: apt-get install -y wrk)")
    gen = (WrkGenerator(exe, args.wrk_threads, gen_dir) if exe else
           PythonGenerator(gen_dir, "chosen with --generator python" if args.generator == "python"
                           else "wrk not found"))
    info = machine_info(gen, work)

    def log(msg=""):
        print(msg, flush=True)

    log(f"Tidestore vs moto S3 benchmark  (work dir {work})")
    log(f"machine: nproc={info['nproc']} cpu={info['cpu']!r} mem={info['mem_gb']:.0f} GiB "
        f"fs={info['fs']}  python {info['python']}  {info['platform']}")
    log(f"load generator: {info['generator']}, {args.concurrency} connections"
        + (f", {min(args.wrk_threads, args.concurrency)} threads" if exe else "")
        + f"; phases {args.duration:g}s (+{args.warmup:g}s warm-up); "
        f"large objects {args.large_mib} MiB x {args.large_reps}")
    log(f"load average before the run: {info['loadavg']} (other work on this machine skews results)")
    log(f"moto {info.get('moto', '?')}, aiohttp {info.get('aiohttp', '?')}; auth: SigV4 header "
        f"signatures (4 KiB PUT body SHA-256 signed; large PUT UNSIGNED-PAYLOAD)\n")

    rnd = os.urandom
    small_body = rnd(4 * KiB)
    large = rnd(args.large_mib * MiB)  # PUT sends slices of a memoryview; GET compares with it
    results: dict = {}
    bare = None
    t_start = time.monotonic()
    try:
        if not args.no_baseline:
            log("bare aiohttp handler (generator / HTTP-stack ceiling: no auth, no storage; GET answers 4 KiB):")
            tgt = start_bare_aiohttp(work, len(large))
            try:
                mon = Monitor(tgt.pid)
                d = min(args.duration, 5.0)
                bare = {}
                for kind, reqs in (("PUT", small_put_set(tgt.signer, "x", 5000, small_body)),
                                   ("GET", small_get_set(tgt.signer, "x", 1000))):
                    gen.run(tgt, reqs, args.concurrency, 1)
                    with mon.phase() as ph:
                        r = gen.run(tgt, reqs, args.concurrency, d)
                    bare[kind] = {**r, **ph}
                    log(f"  bare: 4 KiB {kind}  {fmt_phase(bare[kind])}")
                # the large-object client against a server that only streams bytes: its ceiling
                zeros = bytes(len(large))
                rbuf = bytearray(len(large))
                size_mb = len(large) / MB
                with mon.phase() as ph:
                    secs = [put_large(tgt, f"/{BUCKET}/large/x", large) for _ in range(3)]
                bare["large_put_mbs"] = size_mb * len(secs) / sum(secs)
                with mon.phase() as ph2:
                    secs = [get_large(tgt, f"/{BUCKET}/large/x", zeros, rbuf) for _ in range(3)]
                bare["large_get_mbs"] = size_mb * len(secs) / sum(secs)
                del zeros, rbuf
                log(f"  bare: {args.large_mib} MiB PUT {bare['large_put_mbs']:.0f} MB/s (server CPU "
                    f"{100 * ph['server_cpu_s'] / ph['wall_s']:.0f}%), GET {bare['large_get_mbs']:.0f} "
                    f"MB/s (server CPU {100 * ph2['server_cpu_s'] / ph2['wall_s']:.0f}%)")
                mon.close()
            finally:
                tgt.stop()
        for name in servers:
            log(f"\n{name}:")
            tgt = start_tidestore(work, args.tidestore_config) if name == "tidestore" else start_moto(work)
            try:
                results[name] = run_server(tgt, gen, args, small_body, large, log)
                if args.py_spy and name == "tidestore":
                    profile_server(tgt, gen, args, small_body, large, PySpy(args.py_spy), log)
            finally:
                tgt.stop()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"\nkept {work}")

    elapsed = time.monotonic() - t_start
    log(f"\n== Results (run took {elapsed:.0f}s) ==")
    log(f"machine: nproc={info['nproc']}, Python {info['python']}, generator: {info['generator']}; "
        f"load average before {info['loadavg']}, after "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    missed = []
    if "tidestore" in results and "moto" in results:
        table, missed = report(results["tidestore"], results["moto"], args, gen, bare, info)
        log(table)
        log("\nratio = tidestore / moto (for latency, CPU per request and RSS lower is better; "
            "no goal set). MB = 10^6 bytes.")
        m = results["moto"]
        log("moto as measured in the issue: "
            f"{ISSUE_MOTO['small_put_ops']} PUT/s, {ISSUE_MOTO['small_get_ops']} GET/s, "
            f"{ISSUE_MOTO['large_put_mbs']} MB/s large PUT, {ISSUE_MOTO['large_get_mbs']} MB/s "
            f"large GET, {ISSUE_MOTO['peak_rss_mb']} MB RSS; here: "
            f"{m.phases['small_put']['ops']:.0f}, {m.phases['small_get']['ops']:.0f}, "
            f"{m.phases['large_put']['mbs']:.0f}, {m.phases['large_get']['mbs']:.0f}, "
            f"{m.peak_rss / MB:.0f}")
        if bare:
            log(f"bare aiohttp handler, same clients: {bare['PUT']['ops']:.0f} PUT/s, "
                f"{bare['GET']['ops']:.0f} GET/s (the issue: 11,000-15,000 requests/s), "
                f"{bare['large_put_mbs']:.0f} MB/s large PUT, {bare['large_get_mbs']:.0f} MB/s large GET")
        busy = [f"{n} {ph.replace('_', ' ')} ({fmt_others(d)} of a core)"
                for n, r in results.items() for ph, d in r.phases.items()
                if d.get("others_cpu_s", 0) > OTHERS_WARN * d["wall_s"]]
        if busy:
            log("WARNING: other processes on this machine used CPU during: " + "; ".join(busy)
                + ". Those figures are lower than a quiet machine gives; rerun when it is idle.")
        met = 4 - len(missed)
        log(f"\nGoals met: {met}/4" + ("" if not missed else "; NOT MET: " + "; ".join(missed)))
    else:
        for name, r in results.items():
            log(f"{name}: " + json.dumps({k: round(v.get('ops', v.get('mbs', 0)), 1)
                                          for k, v in r.phases.items()}) + f" peak RSS {r.peak_rss / MB:.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "bare": bare, "missed": missed,
                       "results": {n: {"phases": r.phases, "peak_rss": r.peak_rss,
                                       "large_put_s": r.large_put, "large_get_s": r.large_get}
                                   for n, r in results.items()}}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
