"""`connman.testing.proxy.TcpProxy`: forwards, cuts (reset + refuse), restores, slows down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from connman.testing.proxy import TcpProxy


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def roundtrip(port: int, payload: bytes = b"ping") -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        t0 = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        data = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
        return data, time.perf_counter() - t0
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_forwards_both_ways_and_big_payloads() -> None:
    async with echo_server() as port:
        with TcpProxy("127.0.0.1", port) as proxy:
            assert proxy.port != 0
            assert (await roundtrip(proxy.port))[0] == b"ping"
            big = bytes(range(256)) * 4096  # 1 MiB
            assert (await roundtrip(proxy.port, big))[0] == big
            assert proxy.accepted == 2


async def test_cut_resets_live_connections_and_refuses_new_ones_until_restore() -> None:
    async with echo_server() as port:
        with TcpProxy("127.0.0.1", port) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            assert await asyncio.to_thread(lambda: proxy.live) == 1
            proxy.cut()
            assert proxy.is_cut
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                data = await asyncio.wait_for(reader.read(1), 5)
                if not data:
                    raise asyncio.IncompleteReadError(b"", 1)
            writer.close()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", proxy.port)
            proxy.restore()
            assert (await roundtrip(proxy.port))[0] == b"ping"


async def test_latency_delays_each_direction_then_turns_off() -> None:
    async with echo_server() as port:
        with TcpProxy("127.0.0.1", port) as proxy:
            proxy.latency(0.1)
            _, slow = await roundtrip(proxy.port)
            assert slow >= 0.2  # 0.1 s each way
            proxy.latency(0)
            _, fast = await roundtrip(proxy.port)
            assert fast < 0.1
            with pytest.raises(ValueError, match=">= 0"):
                proxy.latency(-1)


async def test_stop_is_idempotent_and_refuses_after() -> None:
    async with echo_server() as port:
        proxy = TcpProxy("127.0.0.1", port).start()
        listen = proxy.port
        assert "open" in repr(proxy)
        proxy.stop()
        proxy.stop()
        assert not proxy.running
        assert "stopped" in repr(proxy)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", listen)
        with pytest.raises(RuntimeError, match="not started"):
            proxy.cut()


async def test_unreachable_target_resets_the_client() -> None:
    from connman.testing.servers import free_port

    with TcpProxy("127.0.0.1", free_port()) as proxy:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        except ConnectionError:
            pass  # the reset beat the end of our own handshake: the same outcome
        else:
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(1), 5) == b""
            writer.close()
        assert await asyncio.to_thread(lambda: proxy.refused) == 1


async def test_blackhole_keeps_sockets_open_forwards_nothing_then_delivers_on_restore() -> None:
    async with echo_server() as port:
        with TcpProxy("127.0.0.1", port) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                writer.write(b"before")
                assert await asyncio.wait_for(reader.readexactly(6), 5) == b"before"
                proxy.blackhole()
                assert proxy.is_blackholed
                assert "black hole" in repr(proxy)
                writer.write(b"held")
                await writer.drain()
                with pytest.raises(TimeoutError):  # no answer, and no error either
                    await asyncio.wait_for(reader.readexactly(4), 0.5)
                assert not reader.at_eof()
                # A new connection is accepted but reaches nothing.
                late_reader, late_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                late_writer.write(b"late")
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(late_reader.readexactly(4), 0.5)
                proxy.restore()
                assert not proxy.is_blackholed
                # What was held goes through, as TCP's retransmissions would.
                assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
                assert await asyncio.wait_for(late_reader.readexactly(4), 5) == b"late"
                late_writer.close()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()


async def test_cut_during_blackhole_resets_and_restore_serves_again() -> None:
    async with echo_server() as port:
        with TcpProxy("127.0.0.1", port) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            proxy.blackhole()
            proxy.cut()
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 5)
            writer.close()
            proxy.restore()
            assert (await roundtrip(proxy.port))[0] == b"ping"
