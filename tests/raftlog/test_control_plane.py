"""The inter-node control plane on real QUIC sockets on 127.0.0.1: calls, errors,
authentication both ways, peers that are down, restarted or killed."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import msgpack
import pytest
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

from raftlog.cluster_tls import SERVER_NAME, cluster_certificate_pem
from raftlog.control_plane import (
    ALPN,
    ControlClient,
    ControlError,
    ControlServer,
    ControlUnavailable,
)

SECRET = "test-cluster-secret-0123456789abcdef"
HOST = "127.0.0.1"


def run(coroutine, *, uvloop=False):
    if uvloop:
        return pytest.importorskip("uvloop").run(coroutine)
    return asyncio.run(coroutine)


class Node:
    """A server with a few handlers that count how often they ran."""

    def __init__(self, secret=SECRET, port=0):
        self.runs = 0
        self.slow_runs = 0
        self.server = ControlServer(
            HOST,
            port,
            secret,
            {"echo": self.echo, "fail": self.fail, "big": self.big, "slow": self.slow},
            node_id="n1",
        )

    async def echo(self, params):
        self.runs += 1
        return params

    async def fail(self, params):
        raise ValueError(f"bad input {params['x']}")

    async def big(self, params):
        return os.urandom(params["size"])

    async def slow(self, params):
        self.slow_runs += 1
        await asyncio.sleep(params["seconds"])
        return "done"

    @property
    def addr(self):
        return (HOST, self.server.port)

    async def __aenter__(self):
        await self.server.start()
        return self

    async def __aexit__(self, *exc):
        await self.server.close()


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_round_trip_of_value_types(uvloop):
    values = {
        "str": "héllo",
        "bytes": b"\x00\xff" * 10,
        "int": -(2**40),
        "float": 2.5,
        "bool": True,
        "none": None,
        "list": [1, "two", [3.0, None]],
        "dict": {"nested": {"k": b"v"}},
    }

    async def main():
        async with Node() as node:
            client = ControlClient(SECRET, node_id="n2")
            assert await client.call(node.addr, "echo", values) == values
            assert await client.call(node.addr, "echo") == {}
            await client.close()

    run(main(), uvloop=uvloop)


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_200_concurrent_calls_share_one_connection(uvloop):
    async def main():
        async with Node() as node:
            client = ControlClient(SECRET)
            replies = await asyncio.gather(
                *(client.call(node.addr, "echo", {"i": i, "pad": "x" * i}) for i in range(200))
            )
            assert replies == [{"i": i, "pad": "x" * i} for i in range(200)]
            assert node.runs == 200
            assert len(set(node.server._listener._protocols.values())) == 1
            await client.close()

    run(main(), uvloop=uvloop)


def test_handler_exception_and_unknown_method_are_control_errors():
    async def main():
        async with Node() as node:
            client = ControlClient(SECRET)
            with pytest.raises(ControlError, match="ValueError: bad input 42") as raised:
                await client.call(node.addr, "fail", {"x": 42})
            assert not isinstance(raised.value, ControlUnavailable)
            with pytest.raises(ControlError, match="unknown method 'nope'"):
                await client.call(node.addr, "nope")
            # The server survived both.
            assert await client.call(node.addr, "echo", {"ok": 1}) == {"ok": 1}
            await client.close()

    run(main())


def test_one_mebibyte_result():
    async def main():
        async with Node() as node:
            client = ControlClient(SECRET)
            result = await client.call(node.addr, "big", {"size": 1 << 20})
            assert isinstance(result, bytes) and len(result) == 1 << 20
            await client.close()

    run(main())


def test_client_with_wrong_secret_fails_handshake_and_no_handler_runs():
    async def main():
        async with Node() as node:
            client = ControlClient("some-other-secret")
            with pytest.raises(ControlUnavailable, match="handshake failed"):
                await client.call(node.addr, "echo", {"x": 1})
            await client.close()
            assert node.runs == 0

    run(main())


async def raw_request(addr, body):
    """A client that pins the right certificate but sends `body` as it is."""
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=SERVER_NAME,
        cadata=cluster_certificate_pem(SECRET),
    )
    async with connect(*addr, configuration=configuration) as connection:
        reader, writer = await connection.create_stream()
        writer.write(body)
        writer.write_eof()
        return msgpack.unpackb(await asyncio.wait_for(reader.read(), 2), raw=False)


def test_request_without_valid_token_is_unauthorized_and_no_handler_runs():
    async def main():
        async with Node() as node:
            request = msgpack.packb(["intruder", "echo", {"x": 1}], use_bin_type=True)
            for body in (b"\x00" * 32 + request, request, b"short"):
                ok, node_id, kind, message = await raw_request(node.addr, body)
                assert (ok, node_id, kind) == (False, "n1", "Unauthorized")
                assert "unauthorized" in message
            assert node.runs == 0

    run(main())


def test_server_with_wrong_secret_fails_the_handshake():
    async def main():
        async with Node(secret="an-impostor-secret") as node:
            client = ControlClient(SECRET)
            with pytest.raises(ControlUnavailable, match="handshake failed"):
                await client.call(node.addr, "echo", {"x": 1})
            await client.close()
            assert node.runs == 0

    run(main())


def test_call_to_a_port_where_nothing_listens_fails_within_timeout():
    async def main():
        async with Node() as node:
            port = node.server.port
        client = ControlClient(SECRET)
        for _ in range(2):  # a failed connection attempt does not stick either
            started = time.monotonic()
            with pytest.raises(ControlUnavailable):
                await client.call((HOST, port), "echo", timeout=1.0)
            assert time.monotonic() - started < 1.0 + 0.5
        await client.close()

    run(main())


def test_call_that_outlives_its_timeout_is_unavailable_and_the_connection_survives():
    async def main():
        async with Node() as node:
            client = ControlClient(SECRET)
            started = time.monotonic()
            with pytest.raises(ControlUnavailable, match="no answer within 0.3s"):
                await client.call(node.addr, "slow", {"seconds": 1.0}, timeout=0.3)
            assert time.monotonic() - started < 0.3 + 0.5
            assert await client.call(node.addr, "echo", {"x": 1}) == {"x": 1}
            assert len(set(node.server._listener._protocols.values())) == 1
            await client.close()

    run(main())


def test_calls_that_give_up_before_being_sent_never_reach_the_peer():
    """At most 100 calls per connection are on the wire; the others wait unsent, so a
    burst of calls that time out cannot pile up work on the peer."""

    async def main():
        async with Node() as node:
            client = ControlClient(SECRET)
            await client.call(node.addr, "echo")  # connected
            slow_calls = (
                client.call(node.addr, "slow", {"seconds": 0.4}, timeout=0.2) for _ in range(300)
            )
            replies = await asyncio.gather(*slow_calls, return_exceptions=True)
            assert all(isinstance(reply, ControlUnavailable) for reply in replies)
            assert node.slow_runs == 100
            await asyncio.sleep(0.3)  # the abandoned calls finish and free their streams
            assert await client.call(node.addr, "echo", {"x": 1}, timeout=0.5) == {"x": 1}
            assert node.slow_runs == 100
            await client.close()

    run(main())


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_server_restarted_on_same_port_first_call_succeeds(uvloop):
    """A clean restart sends CONNECTION_CLOSE: the client reconnects on its next call."""

    async def main():
        client = ControlClient(SECRET)
        async with Node() as node:
            port = node.server.port
            assert await client.call(node.addr, "echo", {"before": 1}) == {"before": 1}
        async with Node(port=port) as node:
            assert await client.call(node.addr, "echo", {"after": 1}, timeout=1.0) == {"after": 1}
        await client.close()

    run(main(), uvloop=uvloop)


SERVER_PROCESS = """
import asyncio, sys
from raftlog.control_plane import ControlServer

async def main():
    async def echo(params):
        return params
    server = ControlServer("127.0.0.1", int(sys.argv[1]), sys.argv[2], {"echo": echo})
    await server.start()
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start_server_process(port):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER_PROCESS, str(port), SECRET],
        stdout=subprocess.PIPE,
        cwd=root,
    )
    return process, int(process.stdout.readline())


def test_server_killed_and_restarted_first_call_succeeds():
    """A kill -9 says no goodbye; the new process ignores the old connection's packets.
    The quiet connection is probed before use, found dead and replaced."""
    first, port = start_server_process(0)
    second = None
    try:

        async def main():
            nonlocal second
            client = ControlClient(SECRET)
            assert await client.call((HOST, port), "echo", {"n": 1}) == {"n": 1}
            last_answer = time.monotonic()
            first.send_signal(signal.SIGKILL)
            first.wait()
            second, _ = await asyncio.to_thread(start_server_process, port)
            # No real restart is faster than the client's quiet period before a probe
            # (0.2 s); a test machine could be, so make sure.
            await asyncio.sleep(max(0.0, last_answer + 0.3 - time.monotonic()))
            started = time.monotonic()
            assert await client.call((HOST, port), "echo", {"n": 2}, timeout=1.0) == {"n": 2}
            assert time.monotonic() - started < 0.5
            await client.close()

        run(main())
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait()
                process.stdout.close()
