"""A TCP proxy for fault tests: put it between an app and its database, then break the network.

    proxy = TcpProxy(server.host, server.port).start()
    url = server.url(...).replace(f":{server.port}/", f":{proxy.port}/")
    ...
    proxy.cut()            # reset every live connection, refuse new ones
    proxy.restore()        # accept and forward again, on the same port
    proxy.latency(0.05)    # delay every chunk by 50 ms in each direction
    proxy.blackhole()      # keep every socket open but forward nothing (a silent network)
    proxy.restore()        # forward again: held bytes and connections go through, as TCP resends
    proxy.stop()

The proxy runs its own asyncio event loop in a daemon thread, so a test whose event loop is busy
(or blocked in `server.restart()`) does not stall the network, and every method can be called from
sync or async code alike; each returns once the change took effect. It listens on the loopback
interface only and forwards to one fixed address.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["TcpProxy"]

T = TypeVar("T")

_CHUNK = 65536
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection abruptly (RST), the way a dropped network link looks to both ends."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


class _Link:
    """One proxied connection: the client side, the upstream side, and the pumps between them."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.upstream)
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """A loopback TCP proxy to `target_host:target_port` that a test can cut, restore and slow."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 port: int = 0, connect_timeout: float = 5.0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = port
        self.connect_timeout = connect_timeout
        self.accepted = 0
        """Connections accepted and forwarded since start."""
        self.refused = 0
        """Connections that could not reach the target (the client saw them reset)."""
        self._delay = 0.0
        self._cut = False
        self._holed = False
        self._flowing: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public API
    @property
    def running(self) -> bool:
        """Whether the proxy's loop is up (it may be cut)."""
        return self._loop is not None

    @property
    def is_cut(self) -> bool:
        """Whether the proxy refuses connections now."""
        return self._cut

    @property
    def is_blackholed(self) -> bool:
        """Whether the proxy forwards nothing now (sockets open, bytes held)."""
        return self._holed

    @property
    def live(self) -> int:
        """Connections being forwarded now."""
        return len(self._links)

    def start(self) -> Self:
        """Start the loop thread and listen; `port` is set once this returns."""
        with self._lock:
            if self._loop is not None:
                return self
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                    for _ in range(3):  # let closed transports run their connection_lost
                        loop.run_until_complete(asyncio.sleep(0))
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

            self._thread = threading.Thread(target=run, name=f"TcpProxy:{self.target_port}",
                                            daemon=True)
            self._thread.start()
            started.wait()
            self._loop = loop
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def cut(self) -> None:
        """Reset every live connection (both ends see RST) and refuse new ones until `restore()`."""
        self._cut = True
        self._call(self._cut_now())

    def restore(self) -> None:
        """Accept and forward connections again, on the same port (after `cut` or `blackhole`)."""
        self._cut = False
        self._holed = False
        self._call(self._listen())
        self._call(self._set_flowing(True))

    def blackhole(self) -> None:
        """Stop forwarding without closing anything, like a host or link that went silent.

        Live connections stay open and get no byte in either direction; new ones are accepted
        (the kernel completes the TCP handshake) but never reach the target. Nobody sees an error:
        only a client's own deadline ends its wait. `restore()` forwards again what was held, as
        a link that comes back delivers TCP's retransmissions; `cut()` resets everything instead.
        """
        self._holed = True
        self._call(self._set_flowing(False))

    def latency(self, seconds: float) -> None:
        """Delay every chunk by `seconds` in each direction (0 turns it off); order is kept."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._delay = float(seconds)

    def stop(self) -> None:
        """Reset every connection, stop listening and end the loop thread (idempotent)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None:
                return
            with contextlib.suppress(Exception):
                self._call(self._cut_now())
            self._loop = None
            self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._loop is None else (
            "cut" if self._cut else "black hole" if self._holed else "open")
        return (f"<TcpProxy 127.0.0.1:{self.port} -> {self.target_host}:{self.target_port} "
                f"{state}, {self.live} live, latency {self._delay:g}s>")

    # ------------------------------------------------------------------ internals
    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("TcpProxy is not started")
        if threading.current_thread() is self._thread:
            raise RuntimeError("TcpProxy methods must not be called from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)

    async def _set_flowing(self, flowing: bool) -> None:
        event = self._gate()
        if flowing:
            event.set()
        else:
            event.clear()

    def _gate(self) -> asyncio.Event:
        """Set while bytes may flow (made in the proxy's loop, on first use)."""
        if self._flowing is None:
            self._flowing = asyncio.Event()
            if not self._holed:
                self._flowing.set()
        return self._flowing

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, self.listen_host, self.port,
                                                  reuse_address=True)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def _cut_now(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # the port now refuses connections
        for link in list(self._links):
            link.reset()
        self._links.clear()
        for writer in list(self._writers):  # connections not linked yet (still connecting)
            _reset(writer)
        if server is not None:
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            if self._cut:
                _reset(writer)
                return
            await self._gate().wait()  # black-holed: accepted, but nothing reaches the target
            if self._cut:
                _reset(writer)
                return
            try:
                up_reader, upstream = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port),
                    self.connect_timeout)
            except (OSError, TimeoutError):
                self.refused += 1
                _reset(writer)
                return
            up_writer = upstream
            self._writers.add(upstream)
            if self._cut:  # cut while we were connecting
                _reset(upstream)
                _reset(writer)
                return
            self.accepted += 1
            link = _Link(writer, upstream)
            self._links.add(link)
            link.tasks = [asyncio.ensure_future(self._pump(reader, upstream, link)),
                          asyncio.ensure_future(self._pump(up_reader, writer, link))]
            try:
                await asyncio.gather(*link.tasks, return_exceptions=True)
            finally:
                self._links.discard(link)
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    if not w.transport.is_closing():
                        w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: _Link) -> None:
        """Copy one direction; with latency, each chunk leaves `delay` after it arrived."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        flowing = self._gate()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await flowing.wait()  # held, not dropped, while black-holed
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                await flowing.wait()  # black-holed: stop reading, so the sender's buffers fill
                data = await reader.read(_CHUNK)
                queue.put_nowait((loop.time() + self._delay, data))
                if not data or sender.done():
                    break
            await sender
        except OSError:  # one end was reset: reset the other, as a broken link would
            link.reset()
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender
