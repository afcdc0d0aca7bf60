"""Loopback link proxies that the cluster tests can cut: a network partition without
root, namespaces or firewall rules.

Each node reaches each peer's Raft, data and control ports through its own proxy
(the peer's `route` in the node's config), so cutting every proxy that touches one
node isolates it from the group while clients still reach its S3 port. Cutting
closes live TCP connections and refuses new ones, and drops UDP datagrams (QUIC).
The proxies run on one event loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading


def free_port(kind=socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Loop:
    _instance = None

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="netproxy", daemon=True).start()

    @classmethod
    def get(cls) -> "_Loop":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class TcpLink:
    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.cut = False
        self._writers: set = set()
        self.port = _Loop.get().call(self._start())

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer):
        if self.cut:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_w))

        async def pump(r, w):
            try:
                while not self.cut:
                    data = await r.read(1 << 16)
                    if not data:
                        break
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()
                self._writers.discard(w)

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))

    def set_cut(self, cut: bool) -> None:
        async def apply():
            self.cut = cut
            if cut:
                for w in list(self._writers):
                    w.transport.abort()
                self._writers.clear()
        _Loop.get().call(apply())

    def close(self) -> None:
        async def stop():
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
        _Loop.get().call(stop())


class UdpLink:
    """Relays datagrams to a target port; one upstream socket per client address."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.cut = False
        self._upstreams: dict = {}
        self.port = _Loop.get().call(self._start())

    async def _start(self) -> int:
        loop = asyncio.get_running_loop()
        link = self

        class Front(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                link._front = transport

            def datagram_received(self, data, addr):
                if link.cut:
                    return
                up = link._upstreams.get(addr)
                if up is None:
                    loop.create_task(link._open_upstream(addr, data))
                else:
                    up.sendto(data)

        await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
        return self._front.get_extra_info("sockname")[1]

    async def _open_upstream(self, client, first):
        link = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data, _addr):
                if not link.cut:
                    link._front.sendto(data, client)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Back, remote_addr=self.target)
        self._upstreams[client] = transport
        transport.sendto(first)

    def set_cut(self, cut: bool) -> None:
        self.cut = cut

    def close(self) -> None:
        async def stop():
            self._front.close()
            for t in self._upstreams.values():
                t.close()
        _Loop.get().call(stop())
